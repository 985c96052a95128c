r"""Read the data users bring to the SFT and reward-model stages: demonstrations and comparisons.

Files
-----
`paths` is a file, a folder, or a list of those.
- `.jsonl`: one JSON object per line; blank lines are ignored.
- `.parquet`: one record per row (needs pyarrow).
- `.csv`: a header row naming the columns, then one record per row; every cell is a string.
- a folder: every .jsonl, .parquet and .csv file under it, in sorted order; but a folder holding
  `dataset_info.json`, `state.json` or `dataset_dict.json` is a Hugging Face `datasets` folder
  written by `save_to_disk` (needs `pip install datasets`; for a DatasetDict pass one split's folder).
Each record's `source` is "FILE:N": N is the line of a JSONL file, the line a CSV row starts on, the
1-based row of parquet and `datasets`. In parquet and `datasets` a null cell counts as an absent
field (all rows share the columns). Fields not named below are ignored.

A message is {"role": "system" | "user" | "assistant", "content": str}; other keys, such as OpenAI's
"name", are ignored, but for OpenAI's "weight" in "messages": an assistant message of weight 0 keeps
{"weight": 0}, and the SFT loss leaves that turn out (it stays as context). A prompt is a string (one
user message) or a list of messages; it is everything before the response.

Shapes
------
Each record's shape is found by the fields that mark it (shapes.py's Shape.keys: "completion" marks
TRL's prompt-completion, "instruction" or "output" Alpaca), among the shapes `format` reads (auto:
all of them). Per record rather than per file, so a folder or a list of files may mix shapes, and
parquet rows whose null cells drop fields are read by what they hold.
`fields` renames the file's fields first: {"prompt": "question"} reads the field "question" as
"prompt" (errors name "question").

Demonstrations (SFT) -> Demonstration(messages, source), the last message being the assistant's:
    {"messages": [message, ...]}                        chatforge, openai, trl: as given
    {"prompt": str | [message, ...], "response": str}  chatforge: prompt + the assistant's response
    {"prompt": ..., "completion": str | [message, ...]}  trl: prompt + completion (a string is the
                                                        assistant's reply; a list of messages is
                                                        appended, ending with the assistant's)
    {"instruction", "input", "output"}                 alpaca: one user message, the instruction, then
                                                        "\n\n" and the input when the input is not
                                                        blank (it may be absent); output -> assistant
    {"conversations": [{"from", "value"}, ...]}        sharegpt: from human|user -> user, gpt|assistant
                                                        -> assistant, system -> system; an optional
                                                        top-level "system": str goes first

Comparisons (reward model) -> Comparison(prompt, responses ranked best -> worst, labeler, source):
    {"prompt", "responses": [best, ..., worst]}        chatforge: K-wise ranking, K = 2..9
    {"prompt", "chosen": str, "rejected": str}         chatforge, trl: K = 2
    {"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": "..."}    chatforge, hh: Anthropic HH
    {"prompt", "chosen": [message], "rejected": [message]}    trl conversational, explicit prompt:
                                                        each response is one assistant message
    {"chosen": [message, ...], "rejected": [message, ...]}    trl conversational, implicit prompt:
                                                        two whole chats; the turns before the last
                                                        (assistant) message, the same in both, are
                                                        the prompt
  Any shape may carry "labeler": str. HH records are two whole transcripts: they are split into
  turns at "\n\nHuman:" / "\n\nAssistant:" (Human -> user, Assistant -> assistant, each turn's text
  stripped); the turns before the final assistant turn, the same in both, are the prompt, and the two
  final assistant turns are the responses, chosen first.

Rules
-----
Errors (ChatforgeError naming FILE:N and the field; fix the data and run again):
  invalid JSON, CSV or UTF-8; a record that is not an object; a CSV row with more or fewer cells
  than the header; a record of no shape the format reads (the error lists the record's fields and
  those shapes); a missing field; a field of the wrong type; an unknown role (named, with the
  message's or turn's index); an empty chat; a chat whose last message is not the assistant's, or
  whose last two are; a "weight" other than 0 or 1; a prompt whose last message is the assistant's
  (the response follows it); a conversational response that is not one assistant message; fewer
  than 2 or more than 9 ranked responses; a record with two shapes' fields (say 'messages' and
  'response', or 'responses' and 'chosen'); an HH field that is not a "\n\nHuman: ...\n\nAssistant:
  ..." transcript; a field mapping naming a field no shape reads. A read that finds no records at
  all is an error too.
Skips (the record is left out and counted by reason in ReadStats; the first that applies, in order):
  "HH transcript does not end with an assistant turn"
  "HH transcripts differ before the last assistant turn"
  "chosen and rejected differ before the last assistant turn"    (trl implicit prompt)
  "empty prompt"          no message before the response has any non-whitespace content
  "empty response"        a demonstration's reply, or all but one response of a comparison, is empty
                          or only whitespace
  "duplicate responses"   two responses of one comparison are equal, ignoring surrounding whitespace
Notes (the record is kept, changed, and counted in ReadStats.notes):
  "empty response dropped from a ranking"    an empty response leaves a ranking, K falls by one,
                                             while 2 or more responses remain
Texts are kept exactly as given (HH turns excepted); only these checks look at them stripped.

Length rule (tokenizer-agnostic, applied by a stage after tokenizing): `fit_to_context(prompt_len,
response_lens, max_len, too_long)`. When prompt + longest response fit in max_len, keep all.
Otherwise "drop" leaves the record out (reason "too long"); "truncate_prompt" keeps the response
whole and drops prompt tokens from the left (noted as "prompt truncated"), or leaves the record out
when the response alone is longer than max_len (reason "response too long"). When a stage has
nothing left, `nothing_left` says why, by these counts.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from chatforge.data.corpus import open_parquet
from chatforge.data.shapes import MAX_RESPONSES, MIN_RESPONSES  # noqa: F401 (rank, label read them here)
from chatforge.data.shapes import (COMPARISON_SHAPES, DEMONSTRATION_SHAPES, Shape, Skip, check_fields, field_error,
                                   kind_of, parse_record, prompt_messages, shapes_of)
from chatforge.errors import ChatforgeError

SUFFIXES = (".jsonl", ".parquet", ".csv")
DATASETS_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
TOO_LONG_POLICIES = ("truncate_prompt", "drop")
LENGTH_REASONS = ("too long", "response too long")
RANKING_DROP = "empty response dropped from a ranking"


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


def nothing_left(stage: str, what: str, paths, stats: ReadStats, max_len: int, extra: str = "") -> ChatforgeError:
    """The error for a stage left with no record: why each was left out, by reason, and the length only when it was."""
    text = f"{stage}: no {what} left ({paths}): {stats.summary()}{extra}"
    if any(stats.skipped[reason] for reason in LENGTH_REASONS):
        text += (f"; {' and '.join(repr(r) for r in LENGTH_REASONS if stats.skipped[r])} means longer than "
                 f"max_len={max_len} tokens: raise max_len"
                 + (", or use too_long=truncate_prompt" if stats.skipped["too long"] else ""))
    return ChatforgeError(text)


# --- public readers ---------------------------------------------------------------------------------

def read_demonstrations(paths: str | Path | list, format: str = "auto",
                        fields: dict | None = None) -> tuple[list[Demonstration], ReadStats]:
    """Read every demonstration in `paths` (files, folders) in the shapes `format` reads, renaming the files'
    fields by `fields` ({shape field: file field}); errors stop the read, skips are counted."""
    def parse(record: dict, source: str, shapes, stats: ReadStats) -> Demonstration:
        messages = parse_record(record, source, shapes, DEMONSTRATION_SHAPES)
        _check_texts(messages[:-1], [messages[-1]["content"]], minimum=1)
        return Demonstration(messages, source)

    return _read(paths, parse, DEMONSTRATION_SHAPES, format, fields or {})


def read_comparisons(paths: str | Path | list, format: str = "auto",
                     fields: dict | None = None) -> tuple[list[Comparison], ReadStats]:
    """Read every comparison in `paths` (files, folders) in the shapes `format` reads, renaming the files'
    fields by `fields` ({shape field: file field}); errors stop the read, skips are counted."""
    def parse(record: dict, source: str, shapes, stats: ReadStats) -> Comparison:
        labeler = record.get("labeler")
        if labeler is not None and not isinstance(labeler, str):
            raise field_error(source, "labeler", f"expected a string (the labeler's id), got {kind_of(labeler)}")
        prompt, responses = parse_record(record, source, shapes, COMPARISON_SHAPES)
        kept = _check_texts(prompt, responses, minimum=MIN_RESPONSES)
        if len(kept) < len(responses):
            stats.notes[RANKING_DROP] += len(responses) - len(kept)
        return Comparison(prompt, kept, labeler, source)

    return _read(paths, parse, COMPARISON_SHAPES, format, fields or {})


def read_prompts(path: str | Path) -> list[tuple[str | list[dict], str]]:
    """(prompt, 'FILE:LINE') for each line {"prompt": text or [messages]} of a JSONL prompts file."""
    path = Path(path)
    if not path.is_file():
        raise ChatforgeError(f"{path}: prompts file does not exist")
    prompts = []
    for number, record in _jsonl_rows(path):
        source = f"{path}:{number}"
        if not isinstance(record, dict) or "prompt" not in record:
            raise field_error(source, "prompt", 'expected {"prompt": "text"} or {"prompt": [messages]}')
        prompt = record["prompt"]
        prompts.append((prompt if isinstance(prompt, str) else prompt_messages(record, source), source))
    if not prompts:
        raise ChatforgeError(f"{path}: no prompts in the file")
    return prompts


def data_files(paths: str | Path | list) -> list[Path]:
    """Expand files and folders into .jsonl/.parquet/.csv files and `datasets` folders, failing clearly when
    there are none."""
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
                raise ChatforgeError(f"{path}: folder holds no .jsonl, .parquet or .csv files and is not a "
                                     f"datasets folder (no {' or '.join(DATASETS_MARKERS)})")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise ChatforgeError(f"{path}: unsupported file type; use .jsonl, .parquet, .csv or a folder "
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

def _read(paths, parse: Callable, every: tuple[Shape, ...], format: str, fields: dict) -> tuple[list, ReadStats]:
    """parse(record, source, the shapes `format` reads, stats) each record of `paths`, its fields renamed."""
    shapes = shapes_of(format, every, "comparison" if every is COMPARISON_SHAPES else "demonstration")
    check_fields(fields, every, "reading data")
    stats, records = ReadStats(), []
    for path in data_files(paths):
        for number, record in _rows(path):
            stats.read += 1
            source = f"{path}:{number}"
            if not isinstance(record, dict):
                raise ChatforgeError(f"{source}: expected a JSON object, got {kind_of(record)}")
            try:
                records.append(parse(_rename(record, fields), source, shapes, stats))
            except Skip as skip:
                stats.skip(skip.reason)
            except ChatforgeError as error:
                raise _in_file_names(error, fields) from None
    if stats.read == 0:
        raise ChatforgeError(f"{paths}: no records found")
    return records, stats


def _rename(record: dict, fields: dict) -> dict:
    """The record with its fields renamed by the mapping {shape field: file field}; a shape field whose
    name a mapping gives to another column is ignored, like any field no shape reads."""
    if not fields:
        return record
    shape_name = {column: name for name, column in fields.items()}
    return {shape_name.get(key, key): value for key, value in record.items()
            if key in shape_name or key not in fields}


def _in_file_names(error: ChatforgeError, fields: dict) -> ChatforgeError:
    """The error with the mapped fields called by the names the file gives them."""
    renamed = {name: column for name, column in fields.items() if name != column}
    if not renamed:
        return error
    pattern = re.compile(r"'(" + "|".join(map(re.escape, renamed)) + r")(?=['\[.])")
    return ChatforgeError(pattern.sub(lambda match: f"'{renamed[match.group(1)]}", str(error)))


def _rows(path: Path) -> Iterator[tuple[int, object]]:
    if path.is_dir():
        return _datasets_rows(path)
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    if path.suffix == ".csv":
        return _csv_rows(path)
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


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Rows as {column: cell}, numbered by the line each starts on (a quoted cell may span lines)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ChatforgeError(f"{path}:{line}: not valid UTF-8 ({exc.reason}); re-encode the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 0
    try:
        header = [name.strip() for name in next(reader, [])]
        for index, name in enumerate(header):
            if not name or header.index(name) < index:
                problem = "empty" if not name else f"{name!r} again"
                raise ChatforgeError(f"{path}:1: column {index + 1} of the header is {problem}; name each column once")
        line = reader.line_num
        for cells in reader:
            start, line = line + 1, reader.line_num
            if not cells:
                continue  # a blank line
            if len(cells) != len(header):
                raise ChatforgeError(f"{path}:{start}: expected {len(header)} cells, one per header column "
                                     f"({', '.join(header)}), got {len(cells)}")
            yield start, dict(zip(header, cells))
    except csv.Error as exc:
        raise ChatforgeError(f"{path}:{line + 1}: invalid CSV ({exc}); quote a cell holding commas, quotes "
                             "or line breaks, doubling its quotes") from None


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

# --- the rules every shape shares -------------------------------------------------------------------

def _check_texts(prompt: list[dict], responses: list[str], minimum: int) -> list[str]:
    """The skips shared by every shape, in their documented order; the non-empty responses, of which a
    ranking needs `minimum` (an empty one leaves the ranking, the caller counts it)."""
    if not any(message["content"].strip() for message in prompt):
        raise Skip("empty prompt")
    kept = [response for response in responses if response.strip()]
    if len(kept) < minimum:
        raise Skip("empty response")
    stripped = [response.strip() for response in kept]
    if len(set(stripped)) < len(stripped):
        raise Skip("duplicate responses")
    return kept
