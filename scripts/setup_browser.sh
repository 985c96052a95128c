#!/usr/bin/env bash
# Install Debian's chromium for the labeling app's browser tests (Playwright drives /usr/bin/chromium;
# it never downloads a browser of its own). Called by `make test`; needs root and apt where it is missing.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup_browser: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get);" \
         "the browser tests will be skipped" >&2
    exit 0
fi
echo "setup_browser: installing Debian's chromium for the browser tests"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
