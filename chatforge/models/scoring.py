"""Forward passes over rollouts: per-token logprobs of a policy, per-token values of a critic.

A rollout sequence is laid out as `generation.GenerationResult.to_tensors()` gives it:
[left-padded prompt (width P) | right-padded response (width R)], with an attention mask that is 0 on
padding. Position ids are the cumsum of the mask, so padding never shifts a token's position. The
logits at position P + t - 1 predict response token t, so every per-token tensor here is (batch, R)
and lines up with `response_ids` and `response_mask`.

Scoring a rollout batch and training on it go through `by_length`: rows of similar length together, each group
cut to its own padding, so padding costs little compute; the outputs are those of one pass over the whole batch.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Callable

import torch
import torch.nn.functional as F

from chatforge.models.reward import sequence_rewards, token_values


def join_rollout(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input_ids, attention_mask, prompt_width) of prompt + response, from `GenerationResult.to_tensors()`."""
    input_ids = torch.cat([tensors["prompt_ids"], tensors["response_ids"]], 1)  # (batch, P + R)
    attention_mask = torch.cat([tensors["prompt_mask"], tensors["response_mask"]], 1)
    return input_ids, attention_mask, tensors["prompt_ids"].shape[1]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over attended tokens only (left padding does not shift them)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                    temperature: float = 1.0) -> torch.Tensor:
    """Logits (divided by temperature) that predict each response token: (batch, R, vocab), float32."""
    kwargs = {}
    if takes_logits_to_keep(type(unwrapped(model))):  # the LM head only where a response token is predicted
        kwargs["logits_to_keep"] = input_ids.shape[1] - prompt_width + 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                   use_cache=False, **kwargs).logits
    logits = logits[:, logits.shape[1] - (input_ids.shape[1] - prompt_width) - 1:-1].float()
    return logits / temperature if temperature != 1.0 else logits  # T = 1: no copy of (batch, R, vocab) to divide


def unwrapped(model):
    """The HF model inside DDP / FSDP and PEFT wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@cache
def takes_logits_to_keep(model_class) -> bool:
    """Whether the model's forward can skip the LM head on leading positions (most transformers models can)."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under each row of logits: (batch, R, vocab), (batch, R) -> (batch, R)."""
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def token_logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(token), entropy of the distribution), both (batch, R), from ONE log_softmax over the vocabulary
    (the training step's hot spot for large vocabularies); the entropy is detached (logged, not trained)."""
    logp = F.log_softmax(logits, -1)  # (batch, R, vocab)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                      temperature: float = 1.0) -> torch.Tensor:
    """log pi(response token | everything before it) for each response position: (batch, R)."""
    logits = response_logits(model, input_ids, attention_mask, prompt_width, temperature)
    return token_logprobs(logits, input_ids[:, prompt_width:])


def response_logprobs_and_entropy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                                  temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi of each response token, the entropy of pi there, detached), both (batch, R): the actor's pass."""
    logits = response_logits(model, input_ids, attention_mask, prompt_width, temperature)
    return token_logprobs_and_entropy(logits, input_ids[:, prompt_width:])


def response_values(critic, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int) -> torch.Tensor:
    """The critic's value of the state before each response token (at position P + t - 1): (batch, R)."""
    return token_values(critic, input_ids, attention_mask)[:, prompt_width - 1:-1]


def rollout_rewards(reward_model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    prompt_width: int) -> torch.Tensor:
    """The reward model's score of each rollout sequence: (batch,). An RM with a likelihood weight adds the
    likelihood of the response tokens (the prompt's columns are not part of it)."""
    response_mask = attention_mask.clone()
    response_mask[:, :prompt_width] = 0
    return sequence_rewards(reward_model, input_ids, attention_mask, response_mask)


def by_length(forward: Callable, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
              chunk_rows: int = 16):
    """`forward(input_ids, attention_mask, prompt_width)` over groups of `chunk_rows` rows sorted by length, each
    group cut to its own longest prompt and response: the output of one call over the whole batch, for less
    compute on padding. Outputs (a tensor or a tuple of them) are per row (batch,) or per response token
    (batch, R), 0 where a group was cut. Gradients flow through; but a DDP model's forward must run once per
    backward, so under DDP give chunk_rows >= the batch (one call)."""
    if len(input_ids) <= chunk_rows:
        return forward(input_ids, attention_mask, prompt_width)
    response_width = input_ids.shape[1] - prompt_width
    prompt_lengths = attention_mask[:, :prompt_width].sum(1)
    response_lengths = attention_mask[:, prompt_width:].sum(1)
    order = torch.argsort(prompt_lengths + response_lengths, descending=True)
    outputs, single = None, True
    for first in range(0, len(order), chunk_rows):
        rows = order[first:first + chunk_rows]
        start = prompt_width - int(prompt_lengths[rows].max())
        end = prompt_width + int(response_lengths[rows].max())
        parts = forward(input_ids[rows, start:end], attention_mask[rows, start:end], prompt_width - start)
        single = torch.is_tensor(parts)
        parts = (parts,) if single else parts
        if outputs is None:  # (batch,) or (batch, R) each, like the outputs of one call
            outputs = [part.new_zeros((len(input_ids),) + ((response_width,) if part.dim() == 2 else ()))
                       for part in parts]
        for output, part in zip(outputs, parts):
            if part.dim() == 2:
                output[rows, :part.shape[1]] = part
            else:
                output[rows] = part
    return outputs[0] if single else tuple(outputs)
