"""Forward passes over rollouts: per-token logprobs of a policy, per-token values of a critic.

A rollout sequence is laid out as `generation.GenerationResult.to_tensors()` gives it:
[left-padded prompt (width P) | right-padded response (width R)], with an attention mask that is 0 on
padding. Position ids are the cumsum of the mask, so padding never shifts a token's position. The
logits at position P + t - 1 predict response token t, so every per-token tensor here is (batch, R)
and lines up with `response_ids` and `response_mask`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chatforge.models.reward import token_values


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
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                   use_cache=False).logits
    return logits[:, prompt_width - 1:-1].float() / temperature


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


def response_values(critic, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int) -> torch.Tensor:
    """The critic's value of the state before each response token (at position P + t - 1): (batch, R)."""
    return token_values(critic, input_ids, attention_mask)[:, prompt_width - 1:-1]
