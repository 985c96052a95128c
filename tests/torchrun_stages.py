"""Run chatforge commands one after another in this process: `torchrun ... tests/torchrun_stages.py PLAN.json`.

PLAN.json is a list of argument lists, e.g. [["pretrain", "out_dir=...", ...], ["sft", ...]]; one torchrun
launch then covers several stages (tests/test_distributed.py), which keeps the tests' start-up time small."""

import json
import sys

from chatforge.cli import main

if __name__ == "__main__":
    for argv in json.loads(open(sys.argv[1]).read()):
        code = main(argv)
        if code:
            sys.exit(code)
