"""The shapes people's data comes in (TRL, Alpaca, ShareGPT, OpenAI, CSV), each read into the same records."""

import json

import pytest

from chatforge.data.formats import read_comparisons, read_demonstrations
from chatforge.data.shapes import COMPARISON_SHAPES, DEMONSTRATION_SHAPES, check_fields
from chatforge.errors import ChatforgeError


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def msg(role, text):
    return {"role": role, "content": text}


INSTRUCTION, INPUT, OUTPUT = "Translate to English.", "bonjour, mon ami", "hello, my friend"
PROMPT = f"{INSTRUCTION}\n\n{INPUT}"  # Alpaca's instruction, a blank line, its input
CHAT = [msg("user", PROMPT), msg("assistant", OUTPUT)]


# --- demonstrations ---------------------------------------------------------------------------------

def test_one_demonstration_in_every_shape_reads_the_same(tmp_path):
    files = [
        write_lines(tmp_path / "alpaca.jsonl", [{"instruction": INSTRUCTION, "input": INPUT, "output": OUTPUT}]),
        write_lines(tmp_path / "trl.jsonl", [{"prompt": PROMPT, "completion": OUTPUT},
                                             {"prompt": [CHAT[0]], "completion": [CHAT[1]]}]),
        write_lines(tmp_path / "sharegpt.jsonl", [{"conversations": [{"from": "human", "value": PROMPT},
                                                                     {"from": "gpt", "value": OUTPUT}]}]),
        write_lines(tmp_path / "openai.jsonl", [{"messages": [{**CHAT[0], "name": "ann"}, {**CHAT[1], "weight": 1}]}]),
        write_lines(tmp_path / "chatforge.jsonl", [{"prompt": PROMPT, "response": OUTPUT}]),
    ]
    unquoted = OUTPUT.replace(",", "")  # a cell without commas needs no quotes
    (tmp_path / "alpaca.csv").write_text(f'instruction,input,output\n{INSTRUCTION},"{INPUT}",{unquoted}\n')
    (tmp_path / "chat.csv").write_text(f'prompt,response\n"{INSTRUCTION}\n\n{INPUT}","{OUTPUT}"\n')
    demos, stats = read_demonstrations([*files, tmp_path / "chat.csv"])
    assert [d.messages for d in demos] == [CHAT] * 7
    assert stats.summary() == "read 7, kept 7, skipped 0"
    assert [d.source for d in demos][-1] == f"{tmp_path / 'chat.csv'}:2"  # the line the row starts on
    demo = read_demonstrations(tmp_path / "alpaca.csv")[0][0]
    assert demo.messages == [CHAT[0], msg("assistant", unquoted)]


def test_alpaca_without_input_is_the_instruction_alone(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [{"instruction": "Hi?", "output": "Hello."},
                                              {"instruction": "Hi?", "input": "", "output": "Hello."},
                                              {"instruction": "Hi?", "input": " \n", "output": "Hello."}])
    assert [d.messages for d in read_demonstrations(path)[0]] == [[msg("user", "Hi?"), msg("assistant", "Hello.")]] * 3


def test_system_turns_are_kept(tmp_path):
    system = msg("system", "Be brief.")
    expected = [system, msg("user", "a"), msg("assistant", "b"), msg("user", "c"), msg("assistant", "d")]
    path = write_lines(tmp_path / "d.jsonl", [
        {"messages": expected},
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "user", "value": "a"},
                           {"from": "assistant", "value": "b"}, {"from": "human", "value": "c"},
                           {"from": "gpt", "value": "d"}]},
        {"system": "Be brief.", "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                                                  {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}]},
        {"prompt": expected[:4], "completion": [expected[4]]},
    ])
    assert [d.messages for d in read_demonstrations(path)[0]] == [expected] * 4


def test_openai_weight_0_marks_a_turn_as_context(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"messages": [
        msg("user", "a"), {**msg("assistant", "b"), "weight": 0}, msg("user", "c"),
        {**msg("assistant", "d"), "weight": 1}]}])
    assert read_demonstrations(path)[0][0].messages[1] == {**msg("assistant", "b"), "weight": 0}


# --- comparisons ------------------------------------------------------------------------------------

def test_one_comparison_in_every_shape_reads_the_same(tmp_path):
    prompt = [msg("system", "Be brief."), msg("user", "Q?")]
    files = [
        write_lines(tmp_path / "chatforge.jsonl", [{"prompt": prompt, "responses": ["good", "bad"]}]),
        write_lines(tmp_path / "trl.jsonl", [
            {"prompt": prompt, "chosen": "good", "rejected": "bad"},
            {"prompt": prompt, "chosen": [msg("assistant", "good")], "rejected": [msg("assistant", "bad")]},
            {"chosen": [*prompt, msg("assistant", "good")], "rejected": [*prompt, msg("assistant", "bad")]},
        ]),
    ]
    comparisons, stats = read_comparisons(files)
    assert [(c.prompt, c.responses, c.labeler) for c in comparisons] == [(prompt, ["good", "bad"], None)] * 4
    (tmp_path / "c.csv").write_text("prompt,chosen,rejected,labeler\nQ?,good,bad,ann\n")
    (csv_pair,), _ = read_comparisons(tmp_path / "c.csv")
    assert (csv_pair.prompt, csv_pair.responses, csv_pair.labeler) == ([msg("user", "Q?")], ["good", "bad"], "ann")
    assert stats.summary() == "read 4, kept 4, skipped 0"


def test_implicit_prompt_pairs_that_differ_earlier_are_skipped(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [
        {"chosen": [msg("user", "Q?"), msg("assistant", "a")],
         "rejected": [msg("user", "Other?"), msg("assistant", "b")]},
        {"chosen": [msg("user", "Q?"), msg("assistant", "a")], "rejected": [msg("user", "Q?"), msg("assistant", "b")]},
    ])
    comparisons, stats = read_comparisons(path)
    assert [c.source for c in comparisons] == [f"{path}:2"]
    assert stats.skipped == {"chosen and rejected differ before the last assistant turn": 1}


def test_an_empty_response_leaves_a_ranking(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [
        {"prompt": "q", "responses": ["a", "b", " ", "d"]},     # K=4, one empty: kept with K=3
        {"prompt": "q", "responses": ["a", ""]},               # K=2, one empty: too few left
        {"prompt": "q", "responses": ["a", "", "\n"]},          # K=3, two empty: too few left
        {"prompt": "q", "responses": ["", "a", "b", "", "c"]},  # K=5, two empty: kept with K=3
    ])
    comparisons, stats = read_comparisons(path)
    assert [c.responses for c in comparisons] == [["a", "b", "d"], ["a", "b", "c"]]
    assert stats.notes == {"empty response dropped from a ranking": 3}
    assert stats.skipped == {"empty response": 2}
    assert stats.summary() == ("read 4, kept 2 (empty response dropped from a ranking: 3), "
                               "skipped 2 (empty response: 2)")


# --- field mapping and the format override ----------------------------------------------------------

def test_fields_map_odd_names(tmp_path):
    (tmp_path / "d.csv").write_text("id,question,answer\n1,Q?,A.\n")
    demos, _ = read_demonstrations(tmp_path / "d.csv", fields={"prompt": "question", "response": "answer"})
    assert demos[0].messages == [msg("user", "Q?"), msg("assistant", "A.")]
    path = write_lines(tmp_path / "c.jsonl", [{"prompt": "q", "better": "a", "worse": "b", "chosen": "ignored"}])
    (pair,), _ = read_comparisons(path, fields={"chosen": "better", "rejected": "worse"})
    assert pair.responses == ["a", "b"]
    # errors name the file's own fields
    path = write_lines(tmp_path / "d.jsonl", [{"question": "q"}])
    with pytest.raises(ChatforgeError, match=r"d.jsonl:1: field 'answer' is missing \(found \['question'\]\)"):
        read_demonstrations(path, fields={"prompt": "question", "response": "answer"})
    path = write_lines(tmp_path / "p.jsonl", [{"question": 3, "answer": "a"}])
    with pytest.raises(ChatforgeError, match=r"p.jsonl:1: field 'question': expected a string or a list"):
        read_demonstrations(path, fields={"prompt": "question", "response": "answer"})


@pytest.mark.parametrize("fields, message", [
    ({"promt": "question"}, r"field 'fields.promt': unknown field name; expected one of messages, prompt"),
    ({"chosen": "better"}, r"field 'fields.chosen': unknown field name"),  # not a demonstration field
    ({"prompt": ""}, r"field 'fields.prompt': expected the name of a field"),
    ({"prompt": "q", "response": "q"}, r"field 'fields.response': 'q' is mapped to prompt and response"),
])
def test_bad_field_mappings_name_the_field(fields, message):
    with pytest.raises(ChatforgeError, match=message):
        check_fields(fields, DEMONSTRATION_SHAPES, "sft")


def test_labeler_can_be_mapped_for_comparisons():
    check_fields({"labeler": "worker_id"}, COMPARISON_SHAPES, "rm")


def test_format_override_reads_one_shape(tmp_path):
    both = {"messages": [msg("user", "m"), msg("assistant", "n")], "instruction": "i", "output": "o"}
    path = write_lines(tmp_path / "d.jsonl", [both])
    with pytest.raises(ChatforgeError, match=r"d.jsonl:1: field 'messages': give either 'messages' .* or 'instr"):
        read_demonstrations(path)
    assert read_demonstrations(path, "alpaca")[0][0].messages == [msg("user", "i"), msg("assistant", "o")]
    assert read_demonstrations(path, "openai")[0][0].messages == both["messages"]
    with pytest.raises(ChatforgeError, match=r"d.jsonl:1: field 'conversations' is missing .*expected ShareGPT"):
        read_demonstrations(path, "sharegpt")
    pair = write_lines(tmp_path / "c.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(ChatforgeError, match=r"c.jsonl:1: field 'chosen': this record is not Anthropic HH.*"
                                             r"format=chatforge"):
        read_comparisons(pair, "hh")
    with pytest.raises(ChatforgeError, match=r"field 'format': format=alpaca has no comparison shape"):
        read_comparisons(pair, "alpaca")
    with pytest.raises(ChatforgeError, match=r"field 'format': unknown format 'tlr'"):
        read_comparisons(pair, "tlr")


# --- errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("record, message", [
    ({"text": "a", "label": 1}, r"d.jsonl:2: field 'messages' is missing \(found \['label', 'text'\]\); expected "
                                r"one of: .*Alpaca \{\"instruction\", \"input\", \"output\"\}; ShareGPT"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "bing", "value": "a"}]},
     r"d.jsonl:2: field 'conversations\[1\].from': unknown role 'bing' in message 1; expected one of human, user"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]},
     r"d.jsonl:2: field 'conversations\[1\].value' is missing"),
    ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
     r"d.jsonl:2: field 'conversations\[1\].from': the last message must be the assistant's"),
    ({"conversations": []}, r"d.jsonl:2: field 'conversations': expected a list of messages ending"),
    ({"conversations": "hi"}, r"d.jsonl:2: field 'conversations': expected a list of messages \{\"from\", \"value\"\}"),
    ({"instruction": "i", "input": "x"}, r"d.jsonl:2: field 'output' is missing"),
    ({"instruction": "i", "input": None, "output": "o"}, r"d.jsonl:2: field 'input': expected a string, got null"),
    ({"prompt": "q", "completion": 3}, r"d.jsonl:2: field 'completion': expected a string or a list of messages"),
    ({"prompt": "q", "completion": [msg("assistant", "a"), msg("user", "b")]},
     r"d.jsonl:2: field 'completion\[1\].role': the last message must be the assistant's"),
    ({"prompt": "q", "completion": "a", "response": "a"}, r"d.jsonl:2: field 'response': give either"),
    ({"messages": [msg("user", "q"), {**msg("assistant", "a"), "weight": 0.5}]},
     r"d.jsonl:2: field 'messages\[1\].weight': expected 0 or 1, got 0.5"),
])
def test_demonstration_shape_errors_name_file_line_field(tmp_path, record, message):
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": "ok", "response": "fine"}, record])
    with pytest.raises(ChatforgeError, match=message):
        read_demonstrations(path)


@pytest.mark.parametrize("record, message", [
    ({"prompt": "q", "chosen": [msg("assistant", "a")]}, r"c.jsonl:2: field 'rejected' is missing"),
    ({"prompt": "q", "chosen": [msg("assistant", "a")], "rejected": "b"},
     r"c.jsonl:2: field 'rejected': expected a list of messages, as the other response is, got string"),
    ({"prompt": "q", "chosen": [msg("assistant", "a"), msg("assistant", "b")], "rejected": [msg("assistant", "c")]},
     r"c.jsonl:2: field 'chosen': expected one assistant message after the prompt, got 2"),
    ({"prompt": "q", "chosen": [msg("user", "a")], "rejected": [msg("assistant", "c")]},
     r"c.jsonl:2: field 'chosen\[0\].role': expected 'assistant'"),
    ({"chosen": [msg("user", "q"), msg("assistant", "a")], "rejected": [msg("user", "q")]},
     r"c.jsonl:2: field 'rejected\[0\].role': the last message must be the assistant's"),
    ({"chosen": [msg("user", "q"), msg("robot", "a")], "rejected": [msg("user", "q"), msg("assistant", "b")]},
     r"c.jsonl:2: field 'chosen\[1\].role': unknown role 'robot'"),
    ({"question": "q"}, r"c.jsonl:2: field 'responses' is missing \(found \['question'\]\); expected one of: .*"
                        r"TRL conversational"),
])
def test_comparison_shape_errors_name_file_line_field(tmp_path, record, message):
    path = write_lines(tmp_path / "c.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(ChatforgeError, match=message):
        read_comparisons(path)


@pytest.mark.parametrize("text, message", [
    ("prompt,chosen\nq,a\n", r"c.csv:2: field 'rejected' is missing \(found \['chosen', 'prompt'\]\)"),
    ("prompt,chosen,rejected\nq,a,b\n\nq,a\n", r"c.csv:4: expected 3 cells, one per header column .*got 2"),
    ("prompt,chosen,prompt\nq,a,b\n", r"c.csv:1: column 3 of the header is 'prompt' again"),
    ('prompt,chosen,rejected\nq,a,b\n"q\n\n,a,b\n', r"c.csv:3: invalid CSV"),
])
def test_csv_errors_name_the_line(tmp_path, text, message):
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(ChatforgeError, match=message):
        read_comparisons(tmp_path / "c.csv")


def test_csv_rows_are_numbered_by_their_first_line(tmp_path):
    (tmp_path / "c.csv").write_bytes(b'\xef\xbb\xbfprompt,chosen,rejected\n"multi\nline",a,b\n\nq,c,d\n')
    comparisons, _ = read_comparisons(tmp_path / "c.csv")
    assert [(c.prompt[0]["content"], c.source.rsplit(":", 1)[1]) for c in comparisons] == [("multi\nline", "2"),
                                                                                            ("q", "5")]
    (tmp_path / "bad.csv").write_bytes(b"prompt,chosen,rejected\nq,a,b\nq,\xff,b\n")
    with pytest.raises(ChatforgeError, match=r"bad.csv:3: not valid UTF-8"):
        read_comparisons(tmp_path / "bad.csv")
