# Quick start: `make demo` (the built-in end-to-end run on CPU) and `make test` (the test suite).
# Both create .venv/ on first use and reuse it while pyproject.toml and constraints.txt (the pinned versions)
# are unchanged. `make lock` rewrites constraints.txt with the newest versions pyproject.toml allows.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.chatforge-installed

.PHONY: demo test test-fast bench lock clean-venv

$(STAMP): pyproject.toml constraints.txt scripts/setup_venv.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup_venv.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/chatforge demo --config configs/demo.yaml

# pytest exits 5 when it collected no test: that is a failure of the suite, said plainly
test: $(STAMP)
	@bash scripts/setup_browser.sh  # Debian's chromium for the labeling app's browser tests
	@$(VENV)/bin/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; fi; exit $$rc

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/pretrain_throughput.py
	$(VENV)/bin/python benchmarks/generation_throughput.py

lock:
	PYTHON=$(PYTHON) bash scripts/refresh_pins.sh

clean-venv:
	rm -rf $(VENV)
