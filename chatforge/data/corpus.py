"""Stream documents from corpus files (.txt, .jsonl, .parquet) without loading them into memory.

- `.jsonl`: one JSON object per line; the document is its `text_field` (default "text").
- `.txt`: documents are separated by one or more blank lines.
- `.parquet`: the `text_field` column, read in row groups (needs pyarrow).
A folder means every such file under it, in sorted order. Bad records raise a ChatforgeError
naming the file, the line and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from chatforge.errors import ChatforgeError

SUFFIXES = (".jsonl", ".txt", ".parquet")


def corpus_files(paths: str | list[str]) -> list[Path]:
    """Expand files and folders into the list of corpus files, failing clearly when there are none."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            if not found:
                raise ChatforgeError(f"{path}: folder holds no corpus files ({', '.join(SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise ChatforgeError(f"{path}: unsupported corpus file type; use one of {', '.join(SUFFIXES)}")
            files.append(path)
        else:
            raise ChatforgeError(f"{path}: corpus file or folder does not exist")
    return files


def _bad(message: str, on_bad) -> None:
    """Raise for a bad record, or hand its message to `on_bad` (which counts it) so the reader skips it."""
    if on_bad is None:
        raise ChatforgeError(message)
    on_bad(message)


def _read_lines(path: Path, on_bad=None) -> Iterator[tuple[int, str]]:
    try:
        handle = open(path, "rb")
    except OSError as exc:
        _bad(f"{path}: cannot be read ({exc.strerror}); check the path and its permissions", on_bad)
        return
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                _bad(f"{path}:{number}: not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                     "re-encode the file as UTF-8", on_bad)


def _jsonl_documents(path: Path, text_field: str, on_bad=None) -> Iterator[str]:
    for number, line in _read_lines(path, on_bad):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            _bad(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})", on_bad)
            continue
        if not isinstance(record, dict) or text_field not in record:
            keys = list(record) if isinstance(record, dict) else type(record).__name__
            _bad(f"{path}:{number}: field '{text_field}' is missing (found {keys}); "
                 "set text_field=NAME to read another field", on_bad)
            continue
        text = record[text_field]
        if not isinstance(text, str):
            _bad(f"{path}:{number}: field '{text_field}' should be a string, got {type(text).__name__}", on_bad)
            continue
        if text:
            yield text


def _txt_documents(path: Path, on_bad=None) -> Iterator[str]:
    paragraph: list[str] = []
    for _, line in _read_lines(path, on_bad):
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "".join(paragraph).strip()
            paragraph = []
    if paragraph:
        yield "".join(paragraph).strip()


def open_parquet(path: Path):
    """A pyarrow ParquetFile, with clear errors for a missing pyarrow or a damaged file."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ChatforgeError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ChatforgeError(f"{path}: not a readable parquet file ({exc})") from None


def _parquet_documents(path: Path, text_field: str, on_bad=None) -> Iterator[str]:
    try:
        parquet = open_parquet(path)
    except ChatforgeError as exc:
        _bad(str(exc), on_bad)
        return
    if text_field not in parquet.schema_arrow.names:
        _bad(f"{path}: column '{text_field}' is missing (found {parquet.schema_arrow.names}); "
             "set text_field=NAME to read another column", on_bad)
        return
    row = 0
    for group in range(parquet.num_row_groups):
        for text in parquet.read_row_group(group, columns=[text_field]).column(0).to_pylist():
            row += 1
            if text is not None and not isinstance(text, str):
                _bad(f"{path}: row {row}: column '{text_field}' should be a string, got {type(text).__name__}",
                     on_bad)
            elif text:
                yield text


def iter_documents(paths: str | list[str], text_field: str = "text", on_bad=None) -> Iterator[str]:
    """Yield every non-empty document of the corpus, file by file, streaming.

    A bad record (or an unreadable file) raises ChatforgeError naming FILE:LINE; with `on_bad`, that
    message is passed to `on_bad(message)` instead and the record (or file) is skipped.
    """
    for path in corpus_files(paths):
        if path.suffix == ".jsonl":
            yield from _jsonl_documents(path, text_field, on_bad)
        elif path.suffix == ".txt":
            yield from _txt_documents(path, on_bad)
        else:
            yield from _parquet_documents(path, text_field, on_bad)
