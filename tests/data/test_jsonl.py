from chatforge.data.jsonl import read_jsonl, write_jsonl


def test_records_round_trip_through_a_new_folder(tmp_path):
    records = [{"prompt": "Wo wohnt Jörg?", "n": 1}, {"messages": [{"role": "user", "content": "日本語"}]}]
    path = write_jsonl(tmp_path / "new" / "folder" / "data.jsonl", records)
    assert path == tmp_path / "new" / "folder" / "data.jsonl"
    assert read_jsonl(path) == records
    assert "Jörg" in path.read_text(encoding="utf-8")  # non-ASCII stays readable in the file


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
