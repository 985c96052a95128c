"""The decoding engine against HF's own `generate` and against full forward passes, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

from chatforge.errors import ChatforgeError
from chatforge.generation import (
    GenerationResult,
    SamplingParams,
    _beam_search,
    default_stop_token_ids,
    generate,
)
from chatforge.stages.tokenizer import CHAT_TEMPLATE

VOCAB = 96
PROMPTS = [[5, 9, 11, 40, 33, 7, 21, 60, 3], [8, 3, 77], [17, 18, 19, 20, 21, 22]]  # different lengths


def tiny_model(kind: str = "llama", seed: int = 0):
    """A 2-layer random causal LM; GPT-2 gets a wider init so greedy does not just repeat one token."""
    torch.manual_seed(seed)
    if kind == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                             bos_token_id=1, eos_token_id=2, pad_token_id=0)
    else:
        config = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                            initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_tokenizer():
    """A byte-level BPE trained on a few sentences, with EOS, pad and chatforge's chat template (turns end <|end|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|pad|>", "<|endoftext|>", "<|end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["the cat sat on the mat", "a dog ran in the park", "hello world"] * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                        extra_special_tokens=["<|end|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def greedy(max_new_tokens: int = 12, **kwargs) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, stop_token_ids=kwargs.pop("stop_token_ids", []), **kwargs)


def sequence_logprobs(model, prompt: list[int], response: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log p(response[t] | prompt, response[:t]) from one full forward pass, no cache, no padding. # (len,)"""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1: -1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def first_fresh_token(ids: list[int], start: int) -> int:
    """Index of the first token at or after `start` that does not occur earlier in `ids`."""
    return next(t for t in range(start, len(ids)) if ids[t] not in ids[:t])


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_greedy_matches_hf_generate_with_left_padding(kind):
    model = tiny_model(kind)
    model.generation_config.eos_token_id = None  # run every row to max_new_tokens, as ours with no stop ids
    width = max(len(p) for p in PROMPTS)
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    attention_mask = (input_ids != 0).long()
    expected = model.generate(input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=16,
                              pad_token_id=0)[:, width:].tolist()
    result = generate(model, None, PROMPTS, greedy(16))
    assert result.response_ids == expected
    assert len(set(map(tuple, expected))) == len(PROMPTS)  # the rows really differ
    assert result.finished == [False, False, False]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_prompt_output_does_not_depend_on_the_batch(kind):
    model = tiny_model(kind)
    alone = [generate(model, None, [p], greedy(10)).response_ids[0] for p in PROMPTS]
    together = generate(model, None, PROMPTS, greedy(10)).response_ids
    in_pairs = generate(model, None, PROMPTS, greedy(10), batch_size=2).response_ids
    assert together == alone
    assert in_pairs == alone


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_logprobs_equal_a_full_forward_pass(kind):
    model = tiny_model(kind)
    result = generate(model, None, PROMPTS, greedy(10))
    sampled = generate(model, None, PROMPTS, greedy(10, do_sample=True, temperature=0.7, top_k=20, seed=3))
    for i, prompt in enumerate(PROMPTS):
        expected = sequence_logprobs(model, prompt, result.response_ids[i])
        torch.testing.assert_close(torch.tensor(result.logprobs[i]), expected, atol=1e-4, rtol=0)
        # sampling: under the temperature-scaled distribution, before top-k filtering
        expected = sequence_logprobs(model, prompt, sampled.response_ids[i], temperature=0.7)
        torch.testing.assert_close(torch.tensor(sampled.logprobs[i]), expected, atol=1e-4, rtol=0)


def test_stops_at_a_stop_token_and_drops_the_row():
    model = tiny_model()
    free = generate(model, None, PROMPTS, greedy(12)).response_ids
    at = first_fresh_token(free[0], 3)
    stop_id = free[0][at]
    result = generate(model, None, PROMPTS, greedy(12, stop_token_ids=[stop_id]))
    assert result.response_ids[0] == free[0][: at + 1]  # the stop token is kept in ids ...
    assert len(result.logprobs[0]) == at + 1  # ... and in logprobs
    assert result.finished[0] is True
    for i in (1, 2):  # the other rows go on, unaffected by row 0 leaving the batch
        expected = free[i][: free[i].index(stop_id) + 1] if stop_id in free[i] else free[i]
        assert result.response_ids[i] == expected
        assert result.finished[i] is (stop_id in free[i])


def swap_token_ids(model, a: int, b: int) -> None:
    """Relabel tokens a <-> b in the embedding and unembedding: the same model, with the two ids exchanged."""
    with torch.no_grad():
        tables = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())}
        for weight in tables.values():  # once if tied
            weight[[a, b]] = weight[[b, a]]


def test_stops_on_eos_by_default():
    model = tiny_model()  # config eos_token_id = 2; no tokenizer -> the default stop ids are [2]
    assert default_stop_token_ids(None, model) == [2]
    free = generate(model, None, PROMPTS[:1], greedy(12)).response_ids[0]
    at = first_fresh_token(free, 3)
    assert 2 not in free[:at] and 2 not in PROMPTS[0]
    swap_token_ids(model, free[at], 2)  # now the model says EOS where it said free[at]
    result = generate(model, None, PROMPTS[:1], SamplingParams(max_new_tokens=12))
    assert result.response_ids[0] == free[:at] + [2]
    assert result.finished == [True]


def test_text_prompts_default_stop_ids_and_texts_without_the_stop_token():
    tokenizer = tiny_tokenizer()
    eos, end = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")
    assert default_stop_token_ids(tokenizer) == [eos, end]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()
    prompt_ids = tokenizer("the cat")["input_ids"]
    free = generate(model, tokenizer, ["the cat"], greedy(12))
    assert free.prompt_ids == [prompt_ids]
    response = free.response_ids[0]
    at = next(t for t in range(2, 12) if response[t] not in response[:t] + prompt_ids + [eos, end]
              and eos not in response[:t] and end not in response[:t])
    swap_token_ids(model, response[at], end)  # the end-of-turn token now comes at step `at`
    result = generate(model, tokenizer, ["the cat"], SamplingParams(max_new_tokens=12))
    assert result.response_ids[0] == response[:at] + [end]
    assert result.finished == [True]
    assert result.texts[0] == tokenizer.decode(response[:at], skip_special_tokens=True)


def test_cut_at_max_new_tokens_is_not_finished():
    result = generate(tiny_model(), None, PROMPTS, greedy(5))
    assert [len(r) for r in result.response_ids] == [5, 5, 5]
    assert result.finished == [False, False, False]


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    model = tiny_model()
    params = greedy(12, do_sample=True, temperature=1.3, top_p=0.9, seed=7)
    first = generate(model, None, PROMPTS, params).response_ids
    assert generate(model, None, PROMPTS, params).response_ids == first
    other = generate(model, None, PROMPTS, greedy(12, do_sample=True, temperature=1.3, seed=8)).response_ids
    assert other != first
    expected = generate(model, None, PROMPTS, greedy(12)).response_ids
    assert generate(model, None, PROMPTS, greedy(12, do_sample=True, top_k=1, seed=1)).response_ids == expected
    # a nucleus this small holds only the top token
    assert generate(model, None, PROMPTS, greedy(12, do_sample=True, top_p=1e-6, seed=1)).response_ids == expected


def test_beam_search_with_one_beam_is_greedy():
    model = tiny_model()
    free = generate(model, None, PROMPTS, greedy(12)).response_ids
    stop_id = free[0][first_fresh_token(free[0], 4)]
    expected = generate(model, None, PROMPTS, greedy(12, stop_token_ids=[stop_id]))
    with torch.inference_mode():
        for i, prompt in enumerate(PROMPTS):
            ids, logprobs, finished = _beam_search(model, prompt, greedy(12, num_beams=1), [stop_id], 128)
            assert ids == expected.response_ids[i]
            assert finished == expected.finished[i]
            torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(expected.logprobs[i]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy(kind):
    model = tiny_model(kind)
    greedy_result = generate(model, None, PROMPTS, greedy(10))
    beam_result = generate(model, None, PROMPTS, greedy(10, num_beams=3))
    improved = 0
    for i, prompt in enumerate(PROMPTS):
        greedy_total = sequence_logprobs(model, prompt, greedy_result.response_ids[i]).sum()
        beam_logprobs = sequence_logprobs(model, prompt, beam_result.response_ids[i])
        torch.testing.assert_close(torch.tensor(beam_result.logprobs[i]), beam_logprobs, atol=1e-4, rtol=0)
        assert len(beam_result.response_ids[i]) == 10
        assert beam_logprobs.sum() >= greedy_total - 1e-4
        improved += bool(beam_logprobs.sum() > greedy_total + 1e-4)
    assert improved >= 1  # the search does something greedy does not


def test_beam_search_stops_on_a_stop_token():
    model = tiny_model()
    beam = generate(model, None, PROMPTS, greedy(10, num_beams=3)).response_ids[0]
    stop_id = beam[first_fresh_token(beam, 2)]
    result = generate(model, None, PROMPTS[:1], greedy(10, num_beams=3, stop_token_ids=[stop_id]))
    assert result.finished == [True] and result.response_ids[0][-1] == stop_id
    assert len(result.response_ids[0]) <= 10


def test_streaming_callback_sees_every_token():
    model = tiny_model()
    seen: dict[int, list[int]] = {}
    result = generate(model, None, PROMPTS, greedy(6), batch_size=2,
                      on_token=lambda index, token: seen.setdefault(index, []).append(token))
    assert [seen[i] for i in range(len(PROMPTS))] == result.response_ids


def test_padded_tensors_for_rl():
    result = GenerationResult(prompt_ids=[[5, 6, 7], [8]], response_ids=[[9], [10, 11, 2]],
                              logprobs=[[-0.5], [-1.0, -2.0, -3.0]], finished=[False, True], texts=["", ""],
                              pad_token_id=0)
    t = result.to_tensors()
    assert t["prompt_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]  # left padded
    assert t["prompt_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert t["response_ids"].tolist() == [[9, 0, 0], [10, 11, 2]]  # right padded
    assert t["response_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert t["logprobs"].tolist() == [[-0.5, 0.0, 0.0], [-1.0, -2.0, -3.0]]


def test_context_length_cuts_the_response_and_rejects_a_full_prompt():
    model = tiny_model("gpt2")  # 128 positions; past them GPT-2's position table has no entry
    long_prompt = list(range(3, 90)) + list(range(3, 38))  # 122 tokens
    result = generate(model, None, [long_prompt, [5, 6]], greedy(20))
    assert [len(r) for r in result.response_ids] == [128 - 122, 20]
    assert result.finished == [False, False]
    with pytest.raises(ChatforgeError, match="context is 128"):
        generate(model, None, [list(range(3, 90)) * 2], greedy(5))


def test_model_mode_is_restored_and_bad_params_are_reported():
    model = tiny_model().train()
    generate(model, None, PROMPTS[:1], greedy(2))
    assert model.training
    with pytest.raises(ChatforgeError, match="num_beams"):
        generate(model, None, PROMPTS, greedy(2, num_beams=2, do_sample=True))
    with pytest.raises(ChatforgeError, match="top_p"):
        generate(model, None, PROMPTS, greedy(2, do_sample=True, top_p=0.0))
    with pytest.raises(ChatforgeError, match="tokenizer"):
        generate(model, None, ["text needs a tokenizer"], greedy(2))


def test_sample_rows_draws_each_index_with_its_probability_and_never_a_zero_one():
    from chatforge.generation import sample_rows

    probs = torch.tensor([[0.0, 0.1, 0.0, 0.2, 0.7, 0.0]]).repeat(100_000, 1)
    drawn = sample_rows(probs, torch.Generator().manual_seed(0))
    shares = torch.bincount(drawn, minlength=6) / len(drawn)
    torch.testing.assert_close(shares, probs[0], atol=0.005, rtol=0)
    assert set(drawn.tolist()) == {1, 3, 4}
    assert sample_rows(torch.tensor([[0.0, 1.0, 0.0]]), torch.Generator().manual_seed(1)).tolist() == [1]
