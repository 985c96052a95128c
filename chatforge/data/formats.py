r"""Read the data users bring to the SFT and reward-model stages: demonstrations and comparisons.

Files
-----
`paths` is a file, a folder, or a list of those.
- `.jsonl`: one JSON object per line; blank lines are ignored.
- `.parquet`: one record per row (needs pyarrow).
- a folder: every .jsonl and .parquet file under it, in sorted order; but a folder holding
  `dataset_info.json`, `state.json` or `dataset_dict.json` is a Hugging Face `datasets` folder
  written by `save_to_disk` (needs `pip install datasets`; for a DatasetDict pass one split's folder).
Each record's `source` is "FILE:N": N is the line of a JSONL file, the 1-based row of parquet and
`datasets`. In parquet and `datasets` a null cell counts as an absent field (all rows share the
columns). Fields not named below are ignored.

A message is {"role": "system" | "user" | "assistant", "content": str} (other keys are ignored).
A prompt is a string (one user message) or a list of messages; it is everything before the response.

Demonstrations (SFT) -> Demonstration(messages, source), the last message being the assistant's:
    {"prompt": str | [message, ...], "response": str}    -> prompt messages + the assistant's response
    {"messages": [message, ...]}                          -> as given

Comparisons (reward model) -> Comparison(prompt, responses ranked best -> worst, labeler, source):
    {"prompt": str | [message, ...], "responses": [best, ..., worst]}    K-wise ranking, K = 2..9
    {"prompt": str | [message, ...], "chosen": str, "rejected": str}     K = 2
    {"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": "..."}   Anthropic HH
  Any shape may carry "labeler": str. HH records are two whole transcripts: they are split into
  turns at "\n\nHuman:" / "\n\nAssistant:" (Human -> user, Assistant -> assistant, each turn's text
  stripped); the turns before the final assistant turn, the same in both, are the prompt, and the two
  final assistant turns are the responses, chosen first.

Rules
-----
Errors (ChatforgeError naming FILE:N and the field; fix the data and run again):
  invalid JSON; invalid UTF-8; a record that is not an object; a missing field; a field of the wrong
  type; an unknown role (named, with the message's index); an empty `messages` list; a chat whose last
  message is not the assistant's; a prompt whose last message is the assistant's (the response follows
  it); fewer than 2 or more than 9 ranked responses; a record with both shapes ('messages' and
  'prompt'/'response', or 'responses' and 'chosen'/'rejected'); an HH field that is not a
  "\n\nHuman: ...\n\nAssistant: ..." transcript. A read that finds no records at all is an error too.
Skips (the record is left out and counted by reason in ReadStats; the first that applies, in order):
  "HH transcript does not end with an assistant turn"
  "HH transcripts differ before the last assistant turn"
  "empty prompt"          no message before the response has any non-whitespace content
  "empty response"        a response (the last assistant message) is empty or only whitespace
  "duplicate responses"   two responses of one comparison are equal, ignoring surrounding whitespace
Texts are kept exactly as given (HH turns excepted); only these checks look at them stripped.

Length rule (tokenizer-agnostic, applied by a stage after tokenizing): `fit_to_context(prompt_len,
response_lens, max_len, too_long)`. When prompt + longest response fit in max_len, keep all.
Otherwise "drop" leaves the record out (reason "too long"); "truncate_prompt" keeps the response
whole and drops prompt tokens from the left (noted as "prompt truncated"), or leaves the record out
when the response alone is longer than max_len (reason "response too long").
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from chatforge.data.corpus import open_parquet
from chatforge.errors import ChatforgeError

ROLES = ("system", "user", "assistant")
MIN_RESPONSES, MAX_RESPONSES = 2, 9
SUFFIXES = (".jsonl", ".parquet")
DATASETS_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
TOO_LONG_POLICIES = ("truncate_prompt", "drop")

DEMONSTRATION_SHAPES = '{"prompt", "response"} or {"messages": [...]}'
COMPARISON_SHAPES = ('{"prompt", "responses": [best, ..., worst]}, {"prompt", "chosen", "rejected"} '
                     'or Anthropic HH {"chosen", "rejected"}')


@dataclass
class Demonstration:
    """One chat to imitate: `messages` end with the assistant's reply, the tokens the SFT loss counts."""
    messages: list[dict]
    source: str  # "FILE:N"

    @property
    def prompt(self) -> list[dict]:
        """The messages before the final assistant reply."""
        return self.messages[:-1]

    @property
    def response(self) -> str:
        """The final assistant reply."""
        return self.messages[-1]["content"]


@dataclass
class Comparison:
    """One prompt and K = 2..9 responses ranked best -> worst by a labeler."""
    prompt: list[dict]
    responses: list[str]
    labeler: str | None
    source: str  # "FILE:N"


@dataclass
class ReadStats:
    """How many records were read, and why some were left out (`skipped`) or changed (`notes`)."""
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)

    @property
    def kept(self) -> int:
        return self.read - sum(self.skipped.values())

    def skip(self, reason: str) -> None:
        """Count one record left out for `reason`."""
        self.skipped[reason] += 1

    def count_fit(self, fit: Fit) -> bool:
        """Count a fit_to_context decision (a drop as a skip, a truncation as a note); return fit.keep."""
        if fit.reason is not None:
            (self.notes if fit.keep else self.skipped)[fit.reason] += 1
        return fit.keep

    def summary(self) -> str:
        """'read 1000, kept 990, skipped 10 (duplicate responses: 7, empty response: 3)'."""
        text = f"read {self.read}, kept {self.kept}{_reasons(self.notes)}"
        return text + f", skipped {sum(self.skipped.values())}{_reasons(self.skipped)}"


def _reasons(counts: Counter) -> str:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return f" ({', '.join(f'{reason}: {n}' for reason, n in ordered)})" if ordered else ""


# --- public readers ---------------------------------------------------------------------------------

def read_demonstrations(paths: str | Path | list) -> tuple[list[Demonstration], ReadStats]:
    """Read every demonstration in `paths` (files, folders); errors stop the read, skips are counted."""
    return _read(paths, _demonstration)


def read_comparisons(paths: str | Path | list) -> tuple[list[Comparison], ReadStats]:
    """Read every comparison in `paths` (files, folders); errors stop the read, skips are counted."""
    return _read(paths, _comparison)


def read_prompts(path: str | Path) -> list[tuple[str | list[dict], str]]:
    """(prompt, 'FILE:LINE') for each line {"prompt": text or [messages]} of a JSONL prompts file."""
    path = Path(path)
    if not path.is_file():
        raise ChatforgeError(f"{path}: prompts file does not exist")
    prompts = []
    for number, record in _jsonl_rows(path):
        source = f"{path}:{number}"
        if not isinstance(record, dict) or "prompt" not in record:
            raise _error(source, "prompt", 'expected {"prompt": "text"} or {"prompt": [messages]}')
        prompts.append((record["prompt"] if isinstance(record["prompt"], str) else _prompt(record, source), source))
    if not prompts:
        raise ChatforgeError(f"{path}: no prompts in the file")
    return prompts


def data_files(paths: str | Path | list) -> list[Path]:
    """Expand files and folders into .jsonl/.parquet files and `datasets` folders, failing clearly when there are none."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if any((path / marker).is_file() for marker in DATASETS_MARKERS):
                files.append(path)
                continue
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            if not found:
                raise ChatforgeError(f"{path}: folder holds no .jsonl or .parquet files and is not a "
                                     f"datasets folder (no {' or '.join(DATASETS_MARKERS)})")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise ChatforgeError(f"{path}: unsupported file type; use .jsonl, .parquet or a folder "
                                     "written by datasets' save_to_disk")
            files.append(path)
        else:
            raise ChatforgeError(f"{path}: file or folder does not exist")
    return files


# --- the length rule --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fit:
    """What fit_to_context decided: keep the record with its last `prompt_keep` prompt tokens, or not."""
    keep: bool
    prompt_keep: int
    reason: str | None  # to count; None when the record fits as it is

    def cut(self, prompt_ids: list) -> list:
        """The prompt ids to keep: the last `prompt_keep` of them."""
        return prompt_ids[len(prompt_ids) - self.prompt_keep:] if self.keep else []


def fit_to_context(prompt_len: int, response_lens: int | Sequence[int], max_len: int, too_long: str) -> Fit:
    """Fit a prompt and its response(s), given as token counts, into `max_len` tokens by the `too_long`
    policy; with several responses (a comparison) the longest decides, as they share the prompt."""
    if too_long not in TOO_LONG_POLICIES:
        raise ChatforgeError(f"field 'too_long': expected one of {', '.join(TOO_LONG_POLICIES)}, got {too_long!r}")
    response_len = response_lens if isinstance(response_lens, int) else max(response_lens)
    if min(prompt_len, response_len) < 0 or max_len < 1:
        raise ValueError(f"lengths must be >= 0 and max_len >= 1, got {prompt_len}, {response_lens}, {max_len}")
    if prompt_len + response_len <= max_len:
        return Fit(True, prompt_len, None)
    if too_long == "drop":
        return Fit(False, 0, "too long")
    if response_len > max_len:
        return Fit(False, 0, "response too long")
    return Fit(True, max_len - response_len, "prompt truncated")


# --- reading rows -----------------------------------------------------------------------------------

class _Skip(Exception):
    """A record to leave out and count under `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _read(paths, parse: Callable[[dict, str], object]) -> tuple[list, ReadStats]:
    stats, records = ReadStats(), []
    for path in data_files(paths):
        for number, record in _rows(path):
            stats.read += 1
            source = f"{path}:{number}"
            if not isinstance(record, dict):
                raise ChatforgeError(f"{source}: expected a JSON object, got {_kind(record)}")
            try:
                records.append(parse(record, source))
            except _Skip as skip:
                stats.skip(skip.reason)
    if stats.read == 0:
        raise ChatforgeError(f"{paths}: no records found")
    return records, stats


def _rows(path: Path) -> Iterator[tuple[int, object]]:
    if path.is_dir():
        return _datasets_rows(path)
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    return _jsonl_rows(path)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise ChatforgeError(f"{path}:{number}: not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                                     "re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ChatforgeError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    parquet = open_parquet(path)
    number = 0
    for group in range(parquet.num_row_groups):
        for row in parquet.read_row_group(group).to_pylist():
            number += 1
            yield number, {key: value for key, value in row.items() if value is not None}


def _datasets_rows(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        import datasets
    except ImportError:
        raise ChatforgeError(f"{path}: reading a Hugging Face datasets folder needs the datasets package "
                             "(pip install datasets)") from None
    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged or foreign folder can fail in many ways
        raise ChatforgeError(f"{path}: not a readable datasets folder ({exc})") from None
    if isinstance(dataset, datasets.DatasetDict):
        splits = list(dataset)
        raise ChatforgeError(f"{path}: holds the splits {splits}; pass one split's folder, "
                             f"e.g. {path / splits[0]}" if splits else f"{path}: holds no splits")
    for number, row in enumerate(dataset, start=1):
        yield number, {key: value for key, value in row.items() if value is not None}


# --- validating records -----------------------------------------------------------------------------

def _demonstration(record: dict, source: str) -> Demonstration:
    if "messages" in record:
        if "prompt" in record or "response" in record:
            raise _error(source, "messages", "give either 'messages' or 'prompt' and 'response', not both")
        messages = _messages(record["messages"], source, "messages")
        if not messages:
            raise _error(source, "messages", "expected a list of messages ending with the assistant's reply, got []")
        last = len(messages) - 1
        if messages[last]["role"] != "assistant":
            raise _error(source, f"messages[{last}].role", "the last message must be the assistant's reply "
                         f"(the text SFT learns), got '{messages[last]['role']}'")
        if last > 0 and messages[last - 1]["role"] == "assistant":
            raise _error(source, f"messages[{last - 1}].role", "the message before the last reply must not "
                         "be the assistant's; join the two assistant messages")
    elif "prompt" in record or "response" in record:
        messages = _prompt(record, source) + [{"role": "assistant", "content": _string(record, "response", source)}]
    else:
        raise _missing(record, source, "messages", DEMONSTRATION_SHAPES)
    _check_texts(messages[:-1], [messages[-1]["content"]])
    return Demonstration(messages, source)


def _comparison(record: dict, source: str) -> Comparison:
    labeler = record.get("labeler")
    if labeler is not None and not isinstance(labeler, str):
        raise _error(source, "labeler", f"expected a string (the labeler's id), got {_kind(labeler)}")
    pair = "chosen" in record or "rejected" in record
    if "responses" in record:
        if pair:
            raise _error(source, "responses", "give either 'responses' (a ranking) or 'chosen' and 'rejected', not both")
        prompt, responses = _prompt(record, source), _ranking(record["responses"], source)
    elif pair:
        chosen, rejected = _string(record, "chosen", source), _string(record, "rejected", source)
        if "prompt" in record:
            prompt, responses = _prompt(record, source), [chosen, rejected]
        else:
            prompt, responses = _hh_split(chosen, rejected, source)
    else:
        raise _missing(record, source, "responses", COMPARISON_SHAPES)
    _check_texts(prompt, responses)
    return Comparison(prompt, responses, labeler, source)


def _check_texts(prompt: list[dict], responses: list[str]) -> None:
    """The skips shared by every shape, in their documented order."""
    if not any(message["content"].strip() for message in prompt):
        raise _Skip("empty prompt")
    stripped = [response.strip() for response in responses]
    if not all(stripped):
        raise _Skip("empty response")
    if len(set(stripped)) < len(stripped):
        raise _Skip("duplicate responses")


def _prompt(record: dict, source: str) -> list[dict]:
    if "prompt" not in record:
        raise _missing(record, source, "prompt", "a string or a list of messages")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list):
        raise _error(source, "prompt", f"expected a string or a list of messages, got {_kind(prompt)}")
    messages = _messages(prompt, source, "prompt")
    if messages and messages[-1]["role"] == "assistant":
        raise _error(source, f"prompt[{len(messages) - 1}].role", "the last prompt message must not be the "
                     "assistant's (the response follows it); move it into the response")
    return messages


def _messages(value, source: str, name: str) -> list[dict]:
    if not isinstance(value, list):
        raise _error(source, name, f"expected a list of messages {{\"role\", \"content\"}}, got {_kind(value)}")
    messages = []
    for index, message in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise _error(source, where, f"expected a message {{\"role\", \"content\"}}, got {_kind(message)}")
        role, content = _string(message, "role", source, where), _string(message, "content", source, where)
        if role not in ROLES:
            raise _error(source, f"{where}.role", f"unknown role '{role}' in message {index}; "
                         f"expected one of {', '.join(ROLES)}")
        messages.append({"role": role, "content": content})
    return messages


def _ranking(value, source: str) -> list[str]:
    expected = f"expected a list of {MIN_RESPONSES} to {MAX_RESPONSES} strings, best first"
    if not isinstance(value, list):
        raise _error(source, "responses", f"{expected}, got {_kind(value)}")
    if len(value) < MIN_RESPONSES:
        raise _error(source, "responses", f"{expected}, got {len(value)} (a ranking needs at least 2 responses)")
    if len(value) > MAX_RESPONSES:
        raise _error(source, "responses", f"{expected}, got {len(value)}; rank at most {MAX_RESPONSES} "
                     "responses per prompt")
    for index, response in enumerate(value):
        if not isinstance(response, str):
            raise _error(source, f"responses[{index}]", f"expected a string, got {_kind(response)}")
    return list(value)


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_split(chosen: str, rejected: str, source: str) -> tuple[list[dict], list[str]]:
    """Two HH transcripts -> (the shared turns as the prompt, [final chosen reply, final rejected reply])."""
    chosen_turns, rejected_turns = _hh_turns(chosen, source, "chosen"), _hh_turns(rejected, source, "rejected")
    if chosen_turns[-1][0] != "assistant" or rejected_turns[-1][0] != "assistant":
        raise _Skip("HH transcript does not end with an assistant turn")
    if chosen_turns[:-1] != rejected_turns[:-1]:
        raise _Skip("HH transcripts differ before the last assistant turn")
    prompt = [{"role": role, "content": content} for role, content in chosen_turns[:-1]]
    return prompt, [chosen_turns[-1][1], rejected_turns[-1][1]]


def _hh_turns(transcript: str, source: str, name: str) -> list[tuple[str, str]]:
    parts = _HH_TURN.split(transcript.lstrip("\n"))  # [text before the first turn, role, text, role, text, ...]
    if len(parts) < 3 or parts[0].strip():
        raise _error(source, name, "expected an Anthropic HH transcript '\\n\\nHuman: ...\\n\\nAssistant: ...' "
                     "(or add a 'prompt' field to give the prompt separately)")
    return [(_HH_ROLES[role], text.strip()) for role, text in zip(parts[1::2], parts[2::2])]


# --- error messages ---------------------------------------------------------------------------------

def _string(record: dict, name: str, source: str, parent: str | None = None) -> str:
    where = f"{parent}.{name}" if parent else name
    if name not in record:
        raise _missing(record, source, where, "a string")
    value = record[name]
    if not isinstance(value, str):
        raise _error(source, where, f"expected a string, got {_kind(value)}")
    return value


def _error(source: str, name: str, message: str) -> ChatforgeError:
    return ChatforgeError(f"{source}: field '{name}': {message}")


def _missing(record: dict, source: str, name: str, expected: str) -> ChatforgeError:
    return ChatforgeError(f"{source}: field '{name}' is missing (found {sorted(record)}); expected {expected}")


def _kind(value) -> str:
    """The JSON name of a value's type, as users see it in their files."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)
