"""Reward functions: a user's Python callable `(prompts, responses) -> list[float]` as PPO's reward.

Named `package.module:function` (imported with importlib; the current folder is searched first, as with
`python -m`) or `path/to/file.py:function`. `prompts` are chat message lists ([{"role": "user", "content":
...}, ...]; a plain-string prompt is one user message), `responses` the decoded response strings. Every call,
the pre-flight one before training included, is checked: an exception or a result that is not one finite
number per response stops the run with a one-line ChatforgeError.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from numbers import Real
from pathlib import Path

from chatforge.errors import ChatforgeError

PREFLIGHT_RESPONSES = ("", "I am not sure.")  # dummy responses of the call before training


def as_messages(prompt: str | list[dict]) -> list[dict]:
    """The prompt as a list of chat messages: a plain string is one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def import_callable(spec: str, field: str = "reward_fn"):
    """The callable named `package.module:function` or `path/to/file.py:function`."""
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ChatforgeError(f"field '{field}': '{spec}' is not 'package.module:function' or 'file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ChatforgeError(f"field '{field}': {path} does not exist")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())  # like `python -m`: a module beside the config is found
            module = importlib.import_module(module_name)
    except ChatforgeError:
        raise
    except Exception as error:  # the module is missing or fails while importing: either way, name it
        raise ChatforgeError(f"field '{field}': cannot import {module_name}: {one_line(error)}") from error
    function = getattr(module, attribute, None)
    if function is None:
        raise ChatforgeError(f"field '{field}': {module_name} has no '{attribute}'")
    if not callable(function):
        raise ChatforgeError(f"field '{field}': {spec} is not callable ({type(function).__name__})")
    return function


def one_line(error: BaseException) -> str:
    """'TypeName: message' on one line."""
    return f"{type(error).__name__}: " + " ".join(str(error).split())


class RewardFn:
    """A checked reward function: called with (prompts, responses), returns one float per response."""

    def __init__(self, spec: str):
        self.spec = spec
        self.function = import_callable(spec)

    def __call__(self, prompts: list, responses: list[str]) -> list[float]:
        try:
            result = self.function([as_messages(prompt) for prompt in prompts], list(responses))
        except Exception as error:
            raise ChatforgeError(f"reward_fn {self.spec} raised {one_line(error)}") from error
        return check_scores(result, len(responses), f"reward_fn {self.spec}")

    def preflight(self, prompts: list) -> None:
        """Call it on real prompts with dummy responses, so a broken function stops the run before training."""
        prompts = [prompts[i % len(prompts)] for i in range(len(PREFLIGHT_RESPONSES))]
        self(prompts, list(PREFLIGHT_RESPONSES))


def check_scores(result, count: int, name: str) -> list[float]:
    """`result` as a list of `count` finite floats, or a ChatforgeError saying what came back."""
    expected = f"expected a list of {count} finite numbers, one per response"
    if not isinstance(result, (list, tuple)):
        raise ChatforgeError(f"{name} returned a {type(result).__name__}; {expected}")
    if len(result) != count:
        raise ChatforgeError(f"{name} returned {len(result)} scores for {count} responses; {expected}")
    for index, value in enumerate(result):
        if not isinstance(value, Real) or not math.isfinite(value):
            raise ChatforgeError(f"{name} returned {value!r} ({type(value).__name__}) at position {index}; {expected}")
    return [float(value) for value in result]
