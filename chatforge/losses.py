"""Losses and RL math as small pure functions, each tested against hand-computed values.

Shapes: (batch, seq) for per-token tensors, (n,) for per-response scalars.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over `dim`, or everything)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over labels != IGNORE_INDEX. logits (batch, seq, vocab) predict labels (batch, seq)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def ranking_loss(rewards: torch.Tensor, group_sizes: list[int], margin: float = 0.0) -> torch.Tensor:
    """InstructGPT's K-wise ranking loss.

    rewards: (sum of K,) scalar rewards, each group's K responses in rank order (best first).
    Per group: -1/C(K,2) * sum over pairs (w ranked above l) of log sigmoid(r_w - r_l - margin);
    the loss is the mean over groups, so every prompt weighs the same whatever its K.
    """
    losses = []
    start = 0
    for k in group_sizes:
        group = rewards[start:start + k]
        start += k
        winners, losers = torch.triu_indices(k, k, offset=1, device=rewards.device)  # all C(K,2) pairs, w < l
        losses.append(-F.logsigmoid(group[winners] - group[losers] - margin).mean())
    if start != rewards.numel():
        raise ValueError(f"group sizes add up to {start}, but there are {rewards.numel()} rewards")
    return torch.stack(losses).mean()


def pairwise_accuracy(rewards: torch.Tensor, group_sizes: list[int]) -> tuple[int, int]:
    """(pairs ordered correctly, pairs) over every C(K,2) pair of each group (ties count as wrong)."""
    correct = total = start = 0
    for k in group_sizes:
        group = rewards[start:start + k]
        start += k
        winners, losers = torch.triu_indices(k, k, offset=1, device=rewards.device)
        correct += int((group[winners] > group[losers]).sum())
        total += winners.numel()
    return correct, total
