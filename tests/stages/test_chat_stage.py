"""`chatforge chat` and the streaming pieces under it: TokenStream, IncrementalDecoder, history fitting.

(Not named test_chat.py: tests/data/test_chat.py has that module name, and test folders are not packages.)
"""

from __future__ import annotations

import io
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chatforge.cli import main
from chatforge.data.chat import chat_prompt_ids
from chatforge.generation import IncrementalDecoder, SamplingParams, TokenStream, generate
from chatforge.models.io import load_causal_lm, load_tokenizer
from chatforge.stages import chat


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_chat_model_dir):
    return load_causal_lm(tiny_chat_model_dir), load_tokenizer(tiny_chat_model_dir)


PROMPTS = ["the cat sat", "a dog", "Borin lives in Trask and works as a baker"]


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=12),
                                    SamplingParams(max_new_tokens=12, do_sample=True, temperature=0.9, top_p=0.9,
                                                   seed=3)], ids=["greedy", "sampling"])
def test_token_stream_gives_exactly_the_tokens_of_generate(model_and_tokenizer, params):
    model, tokenizer = model_and_tokenizer
    expected = generate(model, tokenizer, PROMPTS, params, batch_size=2)
    seen: dict[int, list[int]] = {i: [] for i in range(len(PROMPTS))}
    stream = TokenStream(model, tokenizer, PROMPTS, params, batch_size=2)
    for index, token in stream:
        seen[index].append(token)
    assert [seen[i] for i in range(len(PROMPTS))] == expected.response_ids
    assert stream.result.response_ids == expected.response_ids
    assert stream.result.logprobs == expected.logprobs and stream.result.texts == expected.texts


def test_closing_a_stream_stops_the_generation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    slow = model.register_forward_pre_hook(lambda *args: time.sleep(0.05))  # so the consumer keeps up
    try:
        stream = TokenStream(model, tokenizer, ["the cat"], SamplingParams(max_new_tokens=80, stop_token_ids=[]))
        tokens = []
        for _, token in stream:
            tokens.append(token)
            if len(tokens) == 2:
                stream.close()
    finally:
        slow.remove()
    assert 2 <= len(tokens) < 20 and stream.result is None  # of 80

    # closed while waiting for a busy executor: it never starts
    executor, gate = ThreadPoolExecutor(max_workers=1), threading.Event()
    executor.submit(gate.wait)
    waiting = TokenStream(model, tokenizer, ["the cat"], SamplingParams(max_new_tokens=5), executor=executor)
    waiting.close()
    gate.set()
    assert list(waiting) == [] and waiting.result is None
    executor.shutdown()


def test_a_stream_raises_the_engines_error_and_refuses_beam_search(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(Exception, match="context"):
        list(TokenStream(model, tokenizer, [list(range(5, 105))], SamplingParams(max_new_tokens=4)))
    with pytest.raises(Exception, match="beam"):
        TokenStream(model, tokenizer, ["the cat"], SamplingParams(num_beams=2))


def test_incremental_decoding_never_splits_a_multibyte_character(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    text = "héllo wörld, 日本語 ok 🙂!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prefixes = [tokenizer.decode(ids[:n]) for n in range(1, len(ids) + 1)]
    assert any(p.endswith("\ufffd") for p in prefixes)  # some character does span several tokens
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.add(token) for token in ids] + [decoder.flush()]
    assert "".join(pieces) == text == decoder.text
    assert not any("\ufffd" in piece for piece in pieces)


def test_fit_history_drops_whole_old_turns_and_keeps_the_system_message(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    long = "the cat sat on a mat and ran to the big red house"
    messages = [{"role": "system", "content": "be brief"}]
    for turn in range(3):
        messages += [{"role": "user", "content": f"{turn} {long}"}, {"role": "assistant", "content": long}]
    messages.append({"role": "user", "content": "last"})
    full = len(chat_prompt_ids(tokenizer, messages))
    ids, dropped = chat.fit_history(tokenizer, messages, context=full, room=0)
    assert dropped == 0 and len(ids) == full
    ids, dropped = chat.fit_history(tokenizer, messages, context=full - 1, room=0)
    assert dropped == 2 and messages[0]["role"] == "system" and messages[1]["content"].startswith("1 ")
    assert ids == chat_prompt_ids(tokenizer, messages) and len(ids) < full
    ids, dropped = chat.fit_history(tokenizer, messages, context=5, room=0)  # cannot fit: newest turn stays
    assert dropped == 4 and [m["content"] for m in messages] == ["be brief", "last"]


class RecordingStdout(io.StringIO):
    """stdout that also keeps every non-empty write, to see a reply arrive in pieces."""

    def __init__(self):
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        if text:
            self.writes.append(text)
        return super().write(text)


def chat_session(monkeypatch, lines: list[str], **fields) -> tuple[list[dict], RecordingStdout]:
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    out = RecordingStdout()
    monkeypatch.setattr(sys, "stdout", out)
    history = chat.run(chat.Config(**fields))
    monkeypatch.undo()
    return history, out


def test_multi_turn_chat_streams_replies_and_resets(model_and_tokenizer, tiny_chat_model_dir, monkeypatch):
    model, tokenizer = model_and_tokenizer
    history, out = chat_session(monkeypatch, ["the cat", "a dog", "/reset", "hello", "/exit", "never read"],
                                model=str(tiny_chat_model_dir), temperature=0, max_new_tokens=6)
    transcript = out.getvalue()
    greedy = SamplingParams(max_new_tokens=6)

    def reply(messages):  # what greedy decoding answers to this history
        return generate(model, tokenizer, [chat_prompt_ids(tokenizer, messages)], greedy).texts[0]

    first = reply([{"role": "user", "content": "the cat"}])
    second = reply([{"role": "user", "content": "the cat"}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "a dog"}])  # the second turn sees the first
    third = reply([{"role": "user", "content": "hello"}])  # after /reset: a fresh chat
    assert transcript.count("bot> ") == 3 and "(chat forgotten)" in transcript
    assert f"bot> {first}" in transcript and f"bot> {second}" in transcript and f"bot> {third}" in transcript
    assert history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": third}]
    start = out.writes.index("bot> ") + 1
    end = next(i for i in range(start, len(out.writes)) if out.writes[i].startswith("\n"))
    assert len(out.writes[start:end]) >= 2 and "".join(out.writes[start:end]) == first  # written as generated


def test_a_long_chat_drops_old_turns_and_a_too_long_message_is_refused(tiny_chat_model_dir, monkeypatch):
    words = "the cat sat on a mat and ran to the big red house where a dog lived"
    history, out = chat_session(monkeypatch, [words] * 4 + [words * 10, "/nope"],
                                model=str(tiny_chat_model_dir), temperature=0.8, max_new_tokens=8, seed=1)
    transcript = out.getvalue()
    assert "(dropped the 2 oldest messages to fit the model's context of 96 tokens)" in transcript
    assert "the model's context is 96 tokens: shorten it" in transcript and "(unknown command /nope" in transcript
    assert history[-1]["role"] == "assistant" and history[-2]["content"] == words


def test_config_errors_name_the_field(capsys):
    assert main(["chat"]) == 2
    assert "field 'model'" in capsys.readouterr().err
    assert main(["chat", "--model", "somewhere", "temperature=-1"]) == 2
    assert "field 'temperature'" in capsys.readouterr().err
