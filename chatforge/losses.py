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


# ---- RL (PPO) math. Per-token tensors are (batch, R) over the response; `mask` is 1 on real tokens.

def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / std over the masked entries (the mean is added back when shift_mean is False)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    return (whitened if shift_mean else whitened + mean) * mask


def kl_penalized_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                         scores: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * (log pi - log pi_ref) on every response token, plus the sequence's
    score on its last token. Returns (rewards, kl), both (batch, R), zero on padding."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.long().cumsum(1) == mask.long().sum(1, keepdim=True)) & mask.bool()  # one True per non-empty row
    return rewards + last * scores[:, None], kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; the value after the last real token is 0 (the episode ends).

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1}.  Returns (advantages, returns),
    returns = advantages + values, both zero on padding. gamma is the discount (the PPO config's `discount`,
    named as in the GAE paper here), not PPO-ptx's weight (`ptx_coef`)."""
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]  # 0 past a row's end: padding is masked
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate: mean over tokens of max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip)).

    Also returns the share of tokens where the clip was active and the approximate KL(old || new)
    (the k3 estimator, ratio - 1 - log ratio), both detached."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clip_fraction": masked_mean((clipped > unclipped).float(), mask).item(),
                 "approx_kl": masked_mean(ratio - 1 - log_ratio, mask).item()}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> tuple[torch.Tensor, dict]:
    """Clipped value loss: 0.5 * mean over tokens of max((V - R)^2, (V_clipped - R)^2), where V_clipped stays
    within `clip` of the rollout's values. Also returns the share of tokens where the clip was active."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean((clipped_error > unclipped_error).float(), mask).item()}
    return loss, stats


def adaptive_kl_coef(kl_coef: float, kl: float, target: float, horizon: int, batch_size: int) -> float:
    """Ziegler et al. (2019)'s proportional controller: move beta so the measured KL approaches the target.

    error = clip(kl / target - 1, -0.2, 0.2);  beta <- beta * (1 + error * batch_size / horizon)."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * batch_size / horizon)


# ---- Critic-free RL (GRPO, RLOO, REINFORCE++): advantages without a value model. A step's rows come in groups
# of `group_size` consecutive responses to the same prompt; `rewards` are per-token (kl_penalized_rewards).

def grpo_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO (Shao et al. 2024): each response's return R = sum of its rewards, normalised within its group,
    (R - mean_group) / (std_group + eps) with the unbiased std (as TRL), on every response token; (batch, R)."""
    returns = (rewards * mask).sum(1).view(-1, group_size)  # (groups, group_size)
    normalised = (returns - returns.mean(1, keepdim=True)) / (returns.std(1, keepdim=True) + eps)
    return normalised.reshape(-1, 1) * mask


def rloo_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): R_i minus the mean return of the group's other responses,
    R_i - (sum_j R_j - R_i) / (K - 1), on every response token; (batch, R)."""
    returns = (rewards * mask).sum(1).view(-1, group_size)
    baseline = (returns.sum(1, keepdim=True) - returns) / (group_size - 1)
    return (returns - baseline).reshape(-1, 1) * mask


def group_centered(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each score minus the mean of its group's, (n,): REINFORCE++-baseline's per-prompt baseline."""
    groups = scores.view(-1, group_size)
    return (groups - groups.mean(1, keepdim=True)).reshape(-1)


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++'s (Hu 2025) per-token return G_t = r_t + gamma * G_{t+1}, zero after a row's last token;
    the stage then whitens it over every token of the global batch. (batch, R)."""
    returns, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma, lam=1.0)  # GAE with V = 0 and lambda 1
    return returns


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate of GRPO's loss (Schulman's k3, as TRL): exp(d) - d - 1, d = ref - logp.
    Never negative, and unbiased for samples of pi."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


# ---- Direct preference optimisation. Per-pair tensors are (pairs,): summed log-probs of each response.

def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The DPO family's loss, mean over pairs, and its implicit rewards (detached).

    h = (pc - rc) - (pr - rr), the policy's log-ratio to the reference on the chosen response minus that on
    the rejected one.
      sigmoid (Rafailov et al. 2023):    -log sigmoid(beta h)
      conservative DPO (label_smoothing eps, the labels flipped with probability eps):
                                         -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
      ipo (Azar et al. 2023):            (h - 1 / (2 beta))^2
    IPO's paper and TRL give it MEAN log-probs per response token (the square punishes length otherwise: a
    summed h grows with the response); this function takes whichever log-probs it is given, and the dpo stage
    passes means for ipo and sums for sigmoid. Returns (loss, stats): chosen_rewards beta (pc - rc) and
    rejected_rewards beta (pr - rr), both (pairs,); accuracy, the share of pairs whose chosen reward is the
    higher (ties wrong); margin, the mean of chosen - rejected reward.
    """
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    h = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")
    with torch.no_grad():
        chosen_rewards, rejected_rewards = beta * chosen_logratio, beta * rejected_logratio
        stats = {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards,
                 "accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
                 "margin": (chosen_rewards - rejected_rewards).mean().item()}
    return losses.mean(), stats
