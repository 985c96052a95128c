import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from chatforge.data.chat import chat_prompt_ids
from chatforge.data.packing import validation_batches
from chatforge.eval.compare import (best_indices, best_of_n, heldout_perplexity, kl_to_reference, sample_answers,
                                    win_rate)
from chatforge.generation import SamplingParams
from chatforge.models.io import load_tokenizer
from chatforge.stages.pretrain import evaluate

PROMPTS = ["the cat sat on", "a dog lived with", "Borin lives in"]


@pytest.fixture(scope="module")
def tokenizer(toy_tokenizer_dir):
    return load_tokenizer(toy_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return AutoModelForCausalLM.from_config(config).eval()


def sampling(seed=0, max_new_tokens=8):
    return SamplingParams(max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, seed=seed)


def test_win_rate_counts_ties_half():
    assert win_rate([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == pytest.approx(0.5)  # win, tie, loss
    assert win_rate([1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]) == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    assert win_rate([0.0], [1.0]) == 0.0
    assert math.isnan(win_rate([], []))
    with pytest.raises(ValueError):
        win_rate([1.0], [1.0, 2.0])


def test_sample_answers_are_prompt_major(tiny_model, tokenizer):
    result = sample_answers(tiny_model, tokenizer, PROMPTS, 3, sampling())
    assert len(result) == 9
    for i, prompt in enumerate(PROMPTS):
        for j in range(3):
            assert result.prompt_ids[i * 3 + j] == chat_prompt_ids(tokenizer, prompt)


def test_kl_to_itself_is_zero_and_to_a_perturbed_copy_positive(tiny_model, tokenizer):
    result = sample_answers(tiny_model, tokenizer, PROMPTS, 4, sampling())
    assert kl_to_reference(tiny_model, copy.deepcopy(tiny_model), result) == pytest.approx(0.0, abs=1e-5)
    perturbed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        perturbed.lm_head.weight.add_(torch.randn_like(perturbed.lm_head.weight), alpha=0.5)
    kl = kl_to_reference(tiny_model, perturbed, result)
    assert kl > 0.1
    # rows batched together or alone: padding never changes a response's log-ratio
    assert kl_to_reference(tiny_model, perturbed, result, batch_size=1) == pytest.approx(kl, rel=1e-4)


def test_heldout_perplexity_is_exp_of_the_pretraining_validation_loss(tiny_model, tokenizer, toy_corpus):
    val = [str(toy_corpus[1])]
    ppl = heldout_perplexity(tiny_model, tokenizer, val, max_tokens=500, seq_len=64)
    loss = evaluate(tiny_model, validation_batches(val, tokenizer, 64, 500, batch_size=16), torch.device("cpu"), None)
    tiny_model.eval()  # evaluate() leaves the model in train mode; heldout_perplexity does not
    assert ppl == pytest.approx(math.exp(loss), rel=1e-4)
    assert ppl > 1.0


def test_best_of_n_takes_the_answer_the_judge_likes_most(tiny_model, tokenizer):
    def longest(prompts, answers):  # a judge that prefers long answers
        return [float(len(a)) for a in answers]

    picks = best_of_n(tiny_model, tokenizer, PROMPTS, 3, longest, sampling(seed=3))
    pool = sample_answers(tiny_model, tokenizer, PROMPTS, 3, sampling(seed=3)).texts  # the same samples
    assert picks == [max(pool[i * 3:i * 3 + 3], key=len) for i in range(len(PROMPTS))]
    assert best_indices([0.1, 0.9, 0.5, 2.0, -1.0, 0.0], 3) == [1, 3]
