import json
import sys
from collections import Counter

import pytest

from chatforge.data.formats import (Fit, ReadStats, data_files, fit_to_context, nothing_left, read_comparisons,
                                    read_demonstrations)
from chatforge.errors import ChatforgeError


def write_lines(path, records):
    """One JSON line per record; a str record is written as it is (for broken lines and blank lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


HH_PROMPT = "\n\nHuman: Where does Borin live?\n\nAssistant: In Trask.\n\nHuman: And his job?"


# --- demonstrations ---------------------------------------------------------------------------------

def test_demonstration_shapes(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    path = write_lines(tmp_path / "demos.jsonl", [
        {"prompt": "Hi?", "response": "Hello.", "kind": "benign"},
        "",
        {"prompt": [system, user("Hi?")], "response": "Hello."},
        {"messages": [system, user("a"), assistant("b"), {**user("c"), "name": "x"}, assistant("d")]},
    ])
    demos, stats = read_demonstrations(path)
    assert [d.messages for d in demos] == [
        [user("Hi?"), assistant("Hello.")],
        [system, user("Hi?"), assistant("Hello.")],
        [system, user("a"), assistant("b"), user("c"), assistant("d")],
    ]
    assert [d.source for d in demos] == [f"{path}:1", f"{path}:3", f"{path}:4"]  # blank line 2 is not a record
    assert demos[2].prompt == [system, user("a"), assistant("b"), user("c")] and demos[2].response == "d"
    assert stats.summary() == "read 3, kept 3, skipped 0"


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "response": broken}', r"d.jsonl:2: invalid JSON"),
    ('["prompt", "response"]', r"d.jsonl:2: expected a JSON object, got list"),
    ({"text": "a"}, r"d.jsonl:2: field 'messages' is missing \(found \['text'\]\)"),
    ({"prompt": "a"}, r"d.jsonl:2: field 'response' is missing"),
    ({"response": "a"}, r"d.jsonl:2: field 'prompt' is missing"),
    ({"prompt": 3, "response": "a"}, r"d.jsonl:2: field 'prompt': expected a string or a list of messages, got number"),
    ({"prompt": "a", "response": None}, r"d.jsonl:2: field 'response': expected a string, got null"),
    ({"prompt": [user("a"), assistant("b")], "response": "c"}, r"d.jsonl:2: field 'prompt\[1\].role': .*must not"),
    ({"messages": "hi"}, r"d.jsonl:2: field 'messages': expected a list of messages"),
    ({"messages": []}, r"d.jsonl:2: field 'messages': expected a list of messages ending with the assistant's"),
    ({"messages": [user("a"), "b"]}, r"d.jsonl:2: field 'messages\[1\]': expected a message .*got string"),
    ({"messages": [{"content": "a"}]}, r"d.jsonl:2: field 'messages\[0\].role' is missing"),
    ({"messages": [user("a"), {"role": "assistant", "content": 5}]},
     r"d.jsonl:2: field 'messages\[1\].content': expected a string, got number"),
    ({"messages": [user("a"), {"role": "bot", "content": "b"}]},
     r"d.jsonl:2: field 'messages\[1\].role': unknown role 'bot' in message 1; expected one of system, user, assistant"),
    ({"messages": [user("a"), assistant("b"), user("c")]},
     r"d.jsonl:2: field 'messages\[2\].role': the last message must be the assistant's reply .*got 'user'"),
    ({"messages": [user("a"), assistant("b"), assistant("c")]}, r"d.jsonl:2: field 'messages\[1\].role': .*must not"),
    ({"messages": [user("a"), assistant("b")], "response": "b"}, r"d.jsonl:2: field 'messages': give either"),
])
def test_demonstration_errors_name_file_line_field(tmp_path, line, message):
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": "ok", "response": "fine"}, line])
    with pytest.raises(ChatforgeError, match=message):
        read_demonstrations(path)


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff", "response": "b"}\n')
    with pytest.raises(ChatforgeError, match=r"d.jsonl:2: not valid UTF-8"):
        read_demonstrations(path)


def test_demonstration_skips_are_counted(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [
        {"prompt": "a", "response": ""},
        {"prompt": "a", "response": " \n "},
        {"messages": [user("a"), assistant("")]},
        {"messages": [assistant("orphan reply")]},
        {"prompt": "  ", "response": "b"},
        {"prompt": "a", "response": "b"},
    ])
    demos, stats = read_demonstrations(path)
    assert len(demos) == 1 and demos[0].source == f"{path}:6"
    assert (stats.read, stats.kept) == (6, 1)
    assert stats.skipped == {"empty response": 3, "empty prompt": 2}
    assert stats.summary() == "read 6, kept 1, skipped 5 (empty response: 3, empty prompt: 2)"


# --- comparisons ------------------------------------------------------------------------------------

def test_comparison_shapes(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [
        {"prompt": "Q?", "responses": ["best", "mid", "worst"], "labeler": "ann", "id": 7},
        {"prompt": [user("Q?")], "chosen": "good", "rejected": "bad"},
        {"chosen": HH_PROMPT + "\n\nAssistant: A baker.", "rejected": HH_PROMPT + "\n\nAssistant:  No idea. "},
        {"chosen": "Human: hi\n\nAssistant: hello", "rejected": "Human: hi\n\nAssistant: go away"},
    ])
    comparisons, stats = read_comparisons(path)
    first, pair, hh, bare = comparisons
    assert (first.prompt, first.responses, first.labeler) == ([user("Q?")], ["best", "mid", "worst"], "ann")
    assert (pair.prompt, pair.responses, pair.labeler) == ([user("Q?")], ["good", "bad"], None)
    assert hh.prompt == [user("Where does Borin live?"), assistant("In Trask."), user("And his job?")]
    assert hh.responses == ["A baker.", "No idea."]
    assert (bare.prompt, bare.responses) == ([user("hi")], ["hello", "go away"])
    assert [c.source for c in comparisons] == [f"{path}:{n}" for n in (1, 2, 3, 4)]
    assert stats.summary() == "read 4, kept 4, skipped 0"


def test_nine_responses_is_the_most(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [{"prompt": "q", "responses": [f"r{i}" for i in range(9)]}])
    assert len(read_comparisons(path)[0][0].responses) == 9


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "q", ', r"c.jsonl:2: invalid JSON"),
    ('"just text"', r"c.jsonl:2: expected a JSON object, got string"),
    ({"prompt": "q"}, r"c.jsonl:2: field 'responses' is missing .*\"chosen\", \"rejected\""),
    ({"responses": ["a", "b"]}, r"c.jsonl:2: field 'prompt' is missing"),
    ({"prompt": "q", "responses": ["a"]},
     r"c.jsonl:2: field 'responses': expected a list of 2 to 9 strings, best first, got 1 \(a ranking needs at least 2"),
    ({"prompt": "q", "responses": [str(i) for i in range(10)]},
     r"c.jsonl:2: field 'responses': expected a list of 2 to 9 strings, best first, got 10"),
    ({"prompt": "q", "responses": "a, b"}, r"c.jsonl:2: field 'responses': expected .*got string"),
    ({"prompt": "q", "responses": ["a", 2]}, r"c.jsonl:2: field 'responses\[1\]': expected a string, got number"),
    ({"prompt": "q", "responses": ["a", "b"], "chosen": "a"}, r"c.jsonl:2: field 'responses': give either"),
    ({"prompt": "q", "chosen": "a"}, r"c.jsonl:2: field 'rejected' is missing"),
    ({"prompt": "q", "chosen": ["a"], "rejected": "b"}, r"c.jsonl:2: field 'chosen': expected a string, got list"),
    ({"prompt": {"role": "user"}, "chosen": "a", "rejected": "b"}, r"c.jsonl:2: field 'prompt': .*got object"),
    ({"prompt": [{"role": "human", "content": "q"}], "chosen": "a", "rejected": "b"},
     r"c.jsonl:2: field 'prompt\[0\].role': unknown role 'human' in message 0"),
    ({"prompt": "q", "responses": ["a", "b"], "labeler": 4},
     r"c.jsonl:2: field 'labeler': expected a string \(the labeler's id\), got number"),
    ({"chosen": "a good answer", "rejected": "a bad one"}, r"c.jsonl:2: field 'chosen': expected an Anthropic HH"),
    ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "Preamble\n\nHuman: q\n\nAssistant: b"},
     r"c.jsonl:2: field 'rejected': expected an Anthropic HH"),
])
def test_comparison_errors_name_file_line_field(tmp_path, line, message):
    path = write_lines(tmp_path / "c.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, line])
    with pytest.raises(ChatforgeError, match=message):
        read_comparisons(path)


def test_errors_come_before_skips(tmp_path):
    # an empty response would be a skip, but ten responses are an error whatever they hold
    path = write_lines(tmp_path / "c.jsonl", [{"prompt": "q", "responses": [""] * 10}])
    with pytest.raises(ChatforgeError, match="got 10"):
        read_comparisons(path)


def test_comparison_skips_are_counted(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [
        {"prompt": "q", "responses": ["a", "b", "a"]},
        {"prompt": "q", "responses": ["a", " a\n"]},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "responses": ["a", "", "  "]},  # one response left: too few to rank
        {"prompt": "q", "chosen": "a", "rejected": "   "},
        {"prompt": [], "chosen": "a", "rejected": "b"},
        {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: other q\n\nAssistant: b"},
        {"chosen": "\n\nHuman: q\n\nAssistant: a\n\nHuman: more?", "rejected": "\n\nHuman: q\n\nAssistant: b"},
        {"chosen": "\n\nHuman: q\n\nAssistant:", "rejected": "\n\nHuman: q\n\nAssistant: b"},
        {"prompt": "q", "responses": ["a", "b"]},
    ])
    comparisons, stats = read_comparisons(path)
    assert [c.source for c in comparisons] == [f"{path}:10"]
    assert stats.skipped == {"duplicate responses": 3, "empty response": 3, "empty prompt": 1,
                             "HH transcripts differ before the last assistant turn": 1,
                             "HH transcript does not end with an assistant turn": 1}
    assert stats.summary() == (
        "read 10, kept 1, skipped 9 (duplicate responses: 3, empty response: 3, "
        "HH transcript does not end with an assistant turn: 1, "
        "HH transcripts differ before the last assistant turn: 1, empty prompt: 1)")


# --- files and folders ------------------------------------------------------------------------------

def test_folders_and_lists_read_files_in_sorted_order(tmp_path):
    write_lines(tmp_path / "b.jsonl", [{"prompt": "q2", "response": "r2"}])
    (tmp_path / "sub").mkdir()
    write_lines(tmp_path / "sub" / "a.jsonl", [{"prompt": "q3", "response": "r3"}])
    write_lines(tmp_path / "a.jsonl", [{"prompt": "q1", "response": "r1"}])
    (tmp_path / "notes.txt").write_text("ignored")
    demos, stats = read_demonstrations(tmp_path)
    assert [d.response for d in demos] == ["r1", "r2", "r3"]
    demos, stats = read_demonstrations([tmp_path / "b.jsonl", str(tmp_path / "a.jsonl")])
    assert [d.response for d in demos] == ["r2", "r1"] and stats.read == 2


def test_path_errors(tmp_path):
    with pytest.raises(ChatforgeError, match="nope.jsonl: file or folder does not exist"):
        data_files(tmp_path / "nope.jsonl")
    with pytest.raises(ChatforgeError, match="folder holds no .jsonl, .parquet or .csv files"):
        data_files(tmp_path)
    (tmp_path / "d.tsv").write_text("prompt\tresponse\n")
    with pytest.raises(ChatforgeError, match="d.tsv: unsupported file type"):
        data_files(tmp_path / "d.tsv")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ChatforgeError, match="no records found"):
        read_comparisons(tmp_path / "empty.jsonl")


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "response": "b"}\n')
    assert read_demonstrations(path)[0][0].response == "b"


def test_missing_optional_packages_say_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ChatforgeError, match=r"c.parquet: reading parquet needs pyarrow \(pip install pyarrow\)"):
        read_comparisons(tmp_path / "c.parquet")
    assert data_files(tmp_path / "saved") == [tmp_path / "saved"]
    with pytest.raises(ChatforgeError, match=r"saved: .*needs the datasets package \(pip install datasets\)"):
        read_comparisons(tmp_path / "saved")


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"prompt": "q1", "responses": ["a", "b"], "chosen": None, "rejected": None, "labeler": "ann"},
            {"prompt": "q2", "responses": None, "chosen": "c", "rejected": "d", "labeler": None},
            {"prompt": "q3", "responses": ["x", "x"], "chosen": None, "rejected": None, "labeler": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet", row_group_size=2)
    comparisons, stats = read_comparisons(tmp_path)
    assert [(c.responses, c.labeler, c.source) for c in comparisons] == [
        (["a", "b"], "ann", f"{tmp_path / 'c.parquet'}:1"), (["c", "d"], None, f"{tmp_path / 'c.parquet'}:2")]
    assert stats.skipped == {"duplicate responses": 1}
    pq.write_table(pa.Table.from_pylist([{"messages": [user("q"), {"role": "robot", "content": "a"}]}]),
                   tmp_path / "d.parquet")
    with pytest.raises(ChatforgeError, match=r"d.parquet:1: field 'messages\[1\].role': unknown role 'robot'"):
        read_demonstrations(tmp_path / "d.parquet")


def test_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([{"prompt": "q", "response": "r"}, {"prompt": "q", "response": ""}])
    dataset.save_to_disk(str(tmp_path / "demos"))
    demos, stats = read_demonstrations(tmp_path / "demos")
    assert [(d.messages, d.source) for d in demos] == [([user("q"), assistant("r")], f"{tmp_path / 'demos'}:1")]
    assert stats.skipped == {"empty response": 1}
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(ChatforgeError, match="pass one split's folder"):
        read_demonstrations(tmp_path / "splits")


# --- the length rule --------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt_len, response_lens, max_len, policy, expected", [
    (10, 5, 16, "drop", Fit(True, 10, None)),
    (10, 6, 16, "truncate_prompt", Fit(True, 10, None)),           # exactly full
    (10, 7, 16, "drop", Fit(False, 0, "too long")),
    (10, 7, 16, "truncate_prompt", Fit(True, 9, "prompt truncated")),
    (10, 16, 16, "truncate_prompt", Fit(True, 0, "prompt truncated")),  # the response alone just fits
    (10, 17, 16, "truncate_prompt", Fit(False, 0, "response too long")),
    (10, [3, 12, 5], 16, "truncate_prompt", Fit(True, 4, "prompt truncated")),  # the longest response decides
    (10, [3, 6], 16, "drop", Fit(True, 10, None)),
])
def test_fit_to_context(prompt_len, response_lens, max_len, policy, expected):
    assert fit_to_context(prompt_len, response_lens, max_len, policy) == expected


def test_fit_cuts_the_prompt_from_the_left_and_is_counted():
    prompt_ids = list(range(100, 110))
    fit = fit_to_context(len(prompt_ids), 7, 10, "truncate_prompt")
    assert fit.cut(prompt_ids) == [107, 108, 109]
    assert fit_to_context(10, 10, 10, "truncate_prompt").cut(prompt_ids) == []
    assert fit_to_context(10, 0, 10, "drop").cut(prompt_ids) == prompt_ids
    stats = ReadStats(read=4)
    kept = [stats.count_fit(fit_to_context(p, r, 10, "truncate_prompt")) for p, r in [(3, 3), (8, 4), (9, 4), (1, 11)]]
    assert kept == [True, True, True, False]
    assert stats.summary() == "read 4, kept 3 (prompt truncated: 2), skipped 1 (response too long: 1)"
    with pytest.raises(ChatforgeError, match="field 'too_long': expected one of truncate_prompt, drop"):
        fit_to_context(1, 1, 10, "truncate")


def test_nothing_left_says_why_by_reason():
    skips = ReadStats(read=3, skipped=Counter({"empty response": 2, "duplicate responses": 1}))
    assert str(nothing_left("rm", "training comparison", ["c.jsonl"], skips, 256)) == (
        "rm: no training comparison left (['c.jsonl']): read 3, kept 0, skipped 3 (empty response: 2, "
        "duplicate responses: 1)")
    too_long = ReadStats(read=2, skipped=Counter({"too long": 1, "response too long": 1}))
    assert str(nothing_left("sft", "val demonstration", "d.jsonl", too_long, 64)).endswith(
        "'too long' and 'response too long' means longer than max_len=64 tokens: raise max_len, "
        "or use too_long=truncate_prompt")
