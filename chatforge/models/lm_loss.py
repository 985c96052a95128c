"""The next-token loss of a causal LM without its (tokens, vocab) logits: the LM head and cross-entropy fused.

Why: for a small model the logits are the largest tensor of a training step (16 x 256 tokens x 2k vocabulary
= 32 MB in fp32, written by the head, read by log-softmax, written again as their gradient, each pass
missing the cache). `linear_cross_entropy` runs head, log-sum-exp and gradient a chunk of rows at a time,
so each chunk's logits stay in cache and the full tensor never exists; the forward pass computes the
gradients of the hidden states and the head weight at once (as Liger-Kernel's fused linear cross-entropy
does) and the backward pass only scales them. The tiny preset's pretraining step: ~10% faster on 2 CPU
cores (docs/LOG.md 2026-12-07, second entry).

`causal_lm_loss` takes this path for plain Llama-family models, whose logits are exactly `lm_head(hidden)`;
anything else (other families, DDP/FSDP/PEFT/compiled wrappers, a head with a bias) takes `model(...)
.logits` and `token_cross_entropy`. Both give the same loss and gradients to float rounding (tests say so).
"""

from __future__ import annotations

import torch
from torch import nn

from chatforge.losses import IGNORE_INDEX, token_cross_entropy

# families whose forward is backbone -> lm_head with no logit scaling or soft-capping
FUSED_FAMILIES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}


def fused_head(model) -> nn.Linear | None:
    """The model's LM head when `causal_lm_loss` may bypass it (a plain, unwrapped Llama-family model)."""
    if type(model).__name__ not in FUSED_FAMILIES:  # DDP, FSDP2, PEFT and torch.compile wrappers land here too
        return None
    head = model.get_output_embeddings()
    return head if type(head) is nn.Linear and head.bias is None else None


def chunk_rows(vocab: int, device: torch.device) -> int:
    """Rows a chunk: ~4 MB of fp32 logits on CPU (stays in cache), ~256 MB on a GPU (enough rows to fill it)."""
    return max(256, (1 << 20) // vocab) if device.type == "cpu" else max(1024, (1 << 26) // vocab)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against labels; gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, rows):
        # hidden (tokens, width), weight (vocab, width), labels (tokens,)
        valid = labels != IGNORE_INDEX
        count = valid.sum().clamp(min=1)
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight) if want_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            h, keep = hidden[start:start + rows], valid[start:start + rows]
            target = labels[start:start + rows].clamp(min=0)  # ignored rows read class 0, then count for nothing
            logits = (h @ weight.T).float()  # (rows, vocab)
            log_normalizer = logits.logsumexp(-1)
            total += ((log_normalizer - logits.gather(1, target[:, None])[:, 0]) * keep).sum()
            grad_logits = logits.sub_(log_normalizer[:, None]).exp_()  # softmax, in place of the logits
            grad_logits[torch.arange(len(target), device=target.device), target] -= 1
            grad_logits.mul_(keep[:, None])
            if want_hidden:
                grad_hidden[start:start + rows] = (grad_logits @ weight).to(hidden.dtype)
            if want_weight:
                grad_weight.add_(grad_logits.T @ h)
        ctx.save_for_backward(grad_hidden, grad_weight, count)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, count = ctx.saved_tensors
        scale = grad_loss / count
        return (grad_hidden * scale.to(grad_hidden.dtype) if grad_hidden is not None else None,
                grad_weight * scale.to(grad_weight.dtype) if grad_weight is not None else None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         rows: int | None = None) -> torch.Tensor:
    """Mean next-token loss of logits `hidden @ weight.T` over labels != IGNORE_INDEX, never holding all logits.

    hidden (..., width), labels (...) of the same leading shape, weight (vocab, width).
    """
    hidden, labels = hidden.flatten(0, -2), labels.flatten()
    rows = rows or chunk_rows(weight.shape[0], hidden.device)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, labels, rows)
    total = sum(nn.functional.cross_entropy((hidden[s:s + rows] @ weight.T).float(), labels[s:s + rows],
                                            ignore_index=IGNORE_INDEX, reduction="sum")
                for s in range(0, hidden.shape[0], rows))
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def causal_lm_loss(model, input_ids: torch.Tensor, labels: torch.Tensor, **forward_kwargs) -> torch.Tensor:
    """Mean loss of `model` predicting labels (batch, seq) from input_ids (batch, seq), the head fused when it can be."""
    head = fused_head(model)
    if head is None:
        return token_cross_entropy(model(input_ids=input_ids, use_cache=False, **forward_kwargs).logits, labels)
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False, **forward_kwargs).last_hidden_state
    return linear_cross_entropy(hidden, head.weight, labels)
