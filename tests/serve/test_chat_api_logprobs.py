"""`logprobs` / `top_logprobs` on chat completions, in OpenAI's shape, streamed too, read by the openai client."""

from __future__ import annotations

import openai
import pytest
import torch
from chatserver import openai_client, running

from chatforge.data.chat import chat_prompt_ids
from chatforge.models.io import load_causal_lm, load_tokenizer

CHAT = [{"role": "user", "content": "the cat sat"}]


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir):
    with running(model=str(tiny_chat_model_dir)) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


@pytest.fixture(scope="module")
def score(tiny_chat_model_dir):
    """The model's logprobs of a reply's tokens, computed in one forward pass over prompt + reply."""
    model, tokenizer = load_causal_lm(tiny_chat_model_dir).eval(), load_tokenizer(tiny_chat_model_dir)
    prompt = chat_prompt_ids(tokenizer, CHAT)

    def logprobs(token_ids: list[int], top: int) -> list[tuple[float, list[int]]]:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + token_ids])).logits[0, len(prompt) - 1:-1].float()
        table = torch.log_softmax(logits, -1)  # (reply, vocab)
        return [(table[t, token].item(), table[t].topk(top).indices.tolist()) for t, token in enumerate(token_ids)]
    return logprobs, tokenizer


def token_ids(tokenizer, entries) -> list[int]:
    """The ids of a logprobs.content list, from each entry's exact bytes (byte-level BPE: one byte, one char)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spell = bytes_to_unicode()
    return [tokenizer.convert_tokens_to_ids("".join(spell[b] for b in e.bytes)) for e in entries]


def test_logprobs_are_the_models_own_and_in_openais_shape(client, score):
    logprobs, tokenizer = score
    reply = client.chat.completions.create(model="tiny-chat", messages=CHAT, temperature=0, max_tokens=12,
                                           logprobs=True, top_logprobs=3)
    [choice] = reply.choices
    entries = choice.logprobs.content  # the openai client's own types: ChatCompletionTokenLogprob
    assert len(entries) >= 6 and b"".join(bytes(e.bytes) for e in entries) == choice.message.content.encode()
    ids = token_ids(tokenizer, entries)
    for entry, (expected, top_ids) in zip(entries, logprobs(ids, 3)):
        assert entry.logprob == pytest.approx(expected, abs=1e-4)
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token  # greedy: the top one
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        assert token_ids(tokenizer, entry.top_logprobs) == top_ids
    assert client.chat.completions.create(model="tiny-chat", messages=CHAT, max_tokens=2).choices[0].logprobs is None


def test_sampled_choices_each_get_their_own_logprobs_streamed_or_not(client, score):
    logprobs, tokenizer = score
    request = dict(model="tiny-chat", messages=CHAT, n=3, temperature=0.9, seed=5, max_tokens=10, logprobs=True)
    reply = client.chat.completions.create(**request)
    for choice in reply.choices:  # row k of each step's logits belongs to choice k: checked by rescoring
        ids = token_ids(tokenizer, choice.logprobs.content)
        assert tokenizer.decode(ids) == choice.message.content
        expected = [lp for lp, _ in logprobs(ids, 1)]
        assert [e.logprob for e in choice.logprobs.content] == pytest.approx(expected, abs=1e-4)
        assert all(e.top_logprobs == [] for e in choice.logprobs.content)
    streamed = {i: [] for i in range(3)}
    for chunk in client.chat.completions.create(stream=True, **request):
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                streamed[choice.index] += choice.logprobs.content
    assert [[e.logprob for e in streamed[i]] for i in range(3)] == \
        [[e.logprob for e in c.logprobs.content] for c in reply.choices]


def test_top_logprobs_needs_logprobs_and_at_most_20(client):
    for request in (dict(top_logprobs=2), dict(logprobs=True, top_logprobs=21)):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="tiny-chat", messages=CHAT, max_tokens=2, **request)
        assert refused.value.body["param"] == "top_logprobs"
