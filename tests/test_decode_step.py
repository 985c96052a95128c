"""The hand-written decode step (chatforge.decode_step) against HF's `generate` and the plain `model(...)` path."""

from __future__ import annotations

import pytest
import torch
from test_generation import PROMPTS, VOCAB, greedy, sequence_logprobs, tiny_model
from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config, Qwen3Config

from chatforge import generation
from chatforge.decode_step import unsupported_reason
from chatforge.generation import SamplingParams, generate

SIZES = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def family_model(name: str):
    """Tiny random models of the other supported families: Qwen2 (q/k/v biases, tied), Qwen3 (q/k norms), Mistral."""
    torch.manual_seed(0)
    if name == "llama":
        return tiny_model("llama")
    config = {"qwen2": lambda: Qwen2Config(**SIZES, tie_word_embeddings=True),
              "qwen3": lambda: Qwen3Config(**SIZES, head_dim=16),
              "mistral": lambda: MistralConfig(**SIZES, sliding_window=None)}[name]()
    model = AutoModelForCausalLM.from_config(config).eval()
    if name == "qwen2":  # random init leaves biases at zero; make them matter
        for layer in model.model.layers:
            torch.nn.init.normal_(layer.self_attn.q_proj.bias, std=0.5)
            torch.nn.init.normal_(layer.self_attn.k_proj.bias, std=0.5)
    return model


def both_paths(model, prompts, params):
    """generate() through the hand-written step and through model(...) every step."""
    fast = generate(model, None, prompts, params)
    generation.FAST_DECODE = False
    try:
        plain = generate(model, None, prompts, params)
    finally:
        generation.FAST_DECODE = True
    return fast, plain


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "mistral"])
def test_fast_step_matches_hf_generate_and_a_full_forward(name):
    model = family_model(name)
    assert unsupported_reason(model, 64) is None
    model.generation_config.eos_token_id = None
    width = max(len(p) for p in PROMPTS)
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    expected = model.generate(input_ids, attention_mask=(input_ids != 0).long(), do_sample=False,
                              max_new_tokens=16, pad_token_id=0)[:, width:].tolist()
    fast, plain = both_paths(model, PROMPTS, greedy(16))
    assert fast.response_ids == expected == plain.response_ids
    for prompt, response, logprobs in zip(PROMPTS, fast.response_ids, fast.logprobs):
        assert torch.allclose(torch.tensor(logprobs), sequence_logprobs(model, prompt, response), atol=1e-4)
    single = generate(model, None, PROMPTS[:1], greedy(16))  # no padding: attention without a mask
    assert single.response_ids == expected[:1]


def test_fast_step_with_rows_ending_at_different_steps():
    """Rows that stop early are computed as ignored rows, then dropped; tokens, logprobs and flags as the plain path."""
    model = family_model("qwen3")
    prompts = PROMPTS + [[30 + i, 4, 50 - i] for i in range(6)]
    free = generate(model, None, prompts, greedy(20)).response_ids
    stops = sorted({ids[min(2 + 3 * i, 19)] for i, ids in enumerate(free)})
    fast, plain = both_paths(model, prompts, greedy(20, stop_token_ids=stops))
    assert fast.response_ids == plain.response_ids
    assert fast.finished == plain.finished and len({len(ids) for ids in fast.response_ids}) > 3
    for a, b in zip(fast.logprobs, plain.logprobs):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)
    seen = []
    generate(model, None, prompts, greedy(20, stop_token_ids=stops), on_token=lambda i, t: seen.append((i, t)))
    assert sorted(seen) == sorted((i, t) for i, ids in enumerate(fast.response_ids) for t in ids)


def test_fast_step_sampling_equals_the_plain_path():
    model = family_model("llama")
    params = SamplingParams(max_new_tokens=12, do_sample=True, temperature=0.8, top_k=20, top_p=0.9,
                            stop_token_ids=[], seed=3)
    fast, plain = both_paths(model, PROMPTS, params)
    assert fast.response_ids == plain.response_ids


def test_unsupported_models_take_the_plain_path(monkeypatch):
    gpt2 = tiny_model("gpt2")
    assert "GPT2LMHeadModel" in unsupported_reason(gpt2, 64)
    short_window = AutoModelForCausalLM.from_config(MistralConfig(**SIZES, sliding_window=8))
    assert "sliding window" in unsupported_reason(short_window, 64)
    eager = AutoModelForCausalLM.from_config(family_model("llama").config, attn_implementation="eager")
    assert "sdpa" in unsupported_reason(eager, 64)

    from peft import LoraConfig, get_peft_model
    lora = get_peft_model(family_model("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert unsupported_reason(lora, 64) is not None
    assert unsupported_reason(lora.get_base_model(), 64) is not None  # its projections are LoRA layers now

    def fail(*args):
        raise AssertionError("the hand-written step was used")
    monkeypatch.setattr(generation, "DecodeStep", fail)
    for model in (gpt2, short_window, lora):
        generate(model, None, PROMPTS, greedy(6))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_row_cut_at_the_context_keeps_running_ignored_while_others_go_on(kind):
    """One row reaches the model's context (128) while five go on: it is computed as an ignored row past its
    last position (GPT-2's learned positions must not overflow), and every row is as when decoded alone."""
    model = tiny_model(kind)
    prompts = [[3 + i % 90 for i in range(122)]] + [[5 + i, 9, 11] for i in range(5)]
    together = generate(model, None, prompts, greedy(20))
    assert [len(ids) for ids in together.response_ids] == [6] + [20] * 5
    for prompt, ids in zip(prompts, together.response_ids):
        assert generate(model, None, [prompt], greedy(20)).response_ids == [ids]


def test_a_model_with_a_forward_hook_takes_the_plain_path_dropping_done_rows_at_once(monkeypatch):
    """serve's logprobs read every step's logits from a forward hook, row k for the k-th running row: the hook
    must see one model(...) call a step over exactly the rows still running."""
    model = family_model("llama")
    widths = []
    handle = model.register_forward_hook(lambda module, args, output: widths.append(output.logits.shape[0]))

    def fail(*args):
        raise AssertionError("the hand-written step was used")
    monkeypatch.setattr(generation, "DecodeStep", fail)
    try:
        result = generate(model, None, PROMPTS, SamplingParams(max_new_tokens=6, do_sample=False, stop_token_ids=[5]))
    finally:
        handle.remove()
    lengths = [len(ids) for ids in result.response_ids]
    running = [sum(length > step for length in lengths) for step in range(max(lengths))]
    assert widths == running[:len(widths)] and len(widths) == max(lengths)
