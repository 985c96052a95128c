import pytest

from chatforge.data.corpus import corpus_files, iter_documents
from chatforge.errors import ChatforgeError


def test_jsonl_txt_and_folders(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n{"text": ""}\n')
    (tmp_path / "b.txt").write_text("para one\nstill one\n\n\npara two\n")
    (tmp_path / "skip.csv").write_text("ignored")
    assert list(iter_documents(tmp_path)) == ["one", "two", "para one\nstill one", "para two"]
    assert len(corpus_files([tmp_path / "a.jsonl", tmp_path / "b.txt"])) == 2


def test_custom_text_field(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    assert list(iter_documents(tmp_path / "a.jsonl", text_field="body")) == ["x"]


@pytest.mark.parametrize("content, message", [
    (b'{"text": "ok"}\n{"text": broken}\n', r"a.jsonl:2: invalid JSON"),
    (b'{"text": "ok"}\n{"body": "x"}\n', r"a.jsonl:2: field 'text' is missing"),
    (b'{"text": 5}\n', r"a.jsonl:1: field 'text' should be a string"),
    (b'{"text": "ok"}\n{"text": "\xff\xfe"}\n', r"a.jsonl:2: not valid UTF-8"),
    (b'[1, 2]\n', r"a.jsonl:1: field 'text' is missing"),
])
def test_bad_records_name_file_line_field(tmp_path, content, message):
    (tmp_path / "a.jsonl").write_bytes(content)
    with pytest.raises(ChatforgeError, match=message):
        list(iter_documents(tmp_path / "a.jsonl"))


def test_missing_paths(tmp_path):
    with pytest.raises(ChatforgeError, match="does not exist"):
        corpus_files([tmp_path / "nope.jsonl"])
    with pytest.raises(ChatforgeError, match="holds no corpus files"):
        corpus_files([tmp_path])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ChatforgeError, match="unsupported corpus file type"):
        corpus_files([tmp_path / "x.csv"])
