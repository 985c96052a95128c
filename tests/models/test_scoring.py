"""chatforge.models.scoring: the fast paths give the numbers of the plain ones (float tolerance)."""

from functools import partial

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

from chatforge.models.scoring import (by_length, position_ids, response_logits, response_logprobs,
                                      response_logprobs_and_entropy, response_values, rollout_rewards, token_logprobs)

CONFIG = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, pad_token_id=0)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(LlamaConfig(**CONFIG)).eval()
    scorer = AutoModelForSequenceClassification.from_config(LlamaConfig(**CONFIG, num_labels=1)).eval()
    return policy, scorer


def rollout(rows: int, prompt_width: int = 9, response_width: int = 7, seed: int = 0):
    """Random prompts left-padded to prompt_width and responses right-padded to response_width, lengths varied."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, CONFIG["vocab_size"], (rows, prompt_width + response_width), generator=generator)
    mask = torch.zeros_like(ids)
    for row in range(rows):
        prompt_len = int(torch.randint(1, prompt_width + 1, (1,), generator=generator))
        response_len = int(torch.randint(0, response_width + 1, (1,), generator=generator))
        mask[row, prompt_width - prompt_len:prompt_width + response_len] = 1
    mask[0, :] = 1  # one row fills the width, as the longest prompt and response of a batch do
    return ids.masked_fill(mask == 0, 0), mask, prompt_width


def plain_logits(model, ids, mask, prompt_width):
    """Logits over every position, then cut: what response_logits computed before logits_to_keep."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits
    return logits[:, prompt_width - 1:-1].float()


def test_response_logits_skips_the_prompt_positions_with_the_same_numbers(models):
    policy, _ = models
    ids, mask, width = rollout(6)
    fast = response_logits(policy, ids, mask, width)
    assert fast.shape == (6, ids.shape[1] - width, CONFIG["vocab_size"])
    torch.testing.assert_close(fast, plain_logits(policy, ids, mask, width), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 16])
def test_by_length_gives_the_whole_batch_outputs(models, chunk_rows):
    policy, scorer = models
    ids, mask, width = rollout(11)
    response_mask = mask[:, width:].float()
    with torch.no_grad():
        plain_logprobs = token_logprobs(plain_logits(policy, ids, mask, width), ids[:, width:])
        logprobs = by_length(partial(response_logprobs, policy), ids, mask, width, chunk_rows)
        plain_values = response_values(scorer, ids, mask, width)
        values = by_length(partial(response_values, scorer), ids, mask, width, chunk_rows)
        rewards = by_length(partial(rollout_rewards, scorer), ids, mask, width, chunk_rows)
        plain_rewards = rollout_rewards(scorer, ids, mask, width)
    assert logprobs.shape == plain_logprobs.shape and values.shape == plain_values.shape
    # equal on every response token; padding is 0 where a group was cut, and masked out by every user
    torch.testing.assert_close(logprobs * response_mask, plain_logprobs * response_mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values * response_mask, plain_values * response_mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rewards, plain_rewards, atol=1e-5, rtol=1e-5)


def test_by_length_with_gradients_gives_the_whole_batch_gradients(models):
    policy, _ = models
    ids, mask, width = rollout(7, seed=1)
    response_mask = mask[:, width:].float()

    def gradients(chunk_rows):
        policy.zero_grad(set_to_none=True)
        logprobs, entropy = by_length(partial(response_logprobs_and_entropy, policy), ids, mask, width, chunk_rows)
        (logprobs * response_mask).sum().backward()
        return {name: p.grad.clone() for name, p in policy.named_parameters()}, entropy * response_mask

    plain, plain_entropy = gradients(7)
    grouped, entropy = gradients(2)
    torch.testing.assert_close(entropy, plain_entropy, atol=1e-5, rtol=1e-5)
    for name, grad in plain.items():
        torch.testing.assert_close(grouped[name], grad, atol=1e-5, rtol=1e-4)
