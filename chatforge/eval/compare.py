"""Comparing two policies: win rate, KL to a reference, held-out perplexity, best-of-n.

Samples come prompt-major: with n samples per prompt, row i * n + j is sample j of prompt i, so the
samples of two models drawn the same way pair up row by row. All functions run the models in eval mode
(dropout off) and put them back in the mode they were in.
"""

from __future__ import annotations

import contextlib
import math

import torch

from chatforge.data.packing import validation_batches
from chatforge.eval.answers import chat_answers
from chatforge.generation import GenerationResult, SamplingParams, context_length
from chatforge.models.scoring import join_rollout, response_logprobs
from chatforge.stages.pretrain import evaluate

# Longest block for the perplexity when the caller gives none: a long-context model's full context
# would cost memory (logits are block x vocab) without changing the per-token loss much.
MAX_PPL_SEQ_LEN = 2048


def win_rate(scores_a: list[float], scores_b: list[float]) -> float:
    """Share of items where a scores higher than b, ties counting half (nan for no items)."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"win_rate: {len(scores_a)} scores against {len(scores_b)}")
    if not scores_a:
        return math.nan
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores_a, scores_b))
    return wins / len(scores_a)


def mean(values) -> float:
    """The mean of a list (nan when empty)."""
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def repeat_each(items: list, n: int) -> list:
    """Each item n times in a row: the prompts (or per-prompt scores) of a prompt-major sample list."""
    return [item for item in items for _ in range(n)]


def take(result: GenerationResult, indices) -> GenerationResult:
    """The rows `indices` of a generation result, as a result of their own."""
    indices = list(indices)
    return GenerationResult([result.prompt_ids[i] for i in indices], [result.response_ids[i] for i in indices],
                            [result.logprobs[i] for i in indices], [result.finished[i] for i in indices],
                            [result.texts[i] for i in indices], result.pad_token_id)


def response_stats(result: GenerationResult) -> dict:
    """Mean response length in tokens (stop token included) and the share of responses that hit a stop token."""
    return {"response_length": mean(len(ids) for ids in result.response_ids),
            "eos_rate": mean(float(done) for done in result.finished)}


@contextlib.contextmanager
def eval_mode(*models):
    """Dropout off inside the block; each model's own mode is restored after it."""
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def sample_answers(model, tokenizer, prompts: list, n: int, params: SamplingParams,
                   batch_size: int = 64) -> GenerationResult:
    """n chat answers to each prompt, prompt-major (row i * n + j is sample j of prompt i)."""
    return chat_answers(model, tokenizer, repeat_each(prompts, n), params, batch_size=batch_size)


@torch.no_grad()
def kl_to_reference(model, reference, result: GenerationResult, temperature: float = 1.0,
                    batch_size: int = 16) -> float:
    """Mean over responses of sum_t log pi(y_t) - log ref(y_t), on `result` sampled from `model`.

    An unbiased estimate of KL(pi || ref) per response (the quantity PPO's penalty is built from);
    `temperature` is the one the samples were drawn at (1.0 for greedy). Both models share a tokenizer.
    """
    if reference is model:
        return 0.0
    if not len(result):
        return math.nan
    totals = []
    with eval_mode(model, reference):
        for start in range(0, len(result), batch_size):
            tensors = take(result, range(start, min(start + batch_size, len(result)))).to_tensors(device=model.device)
            input_ids, attention_mask, prompt_width = join_rollout(tensors)
            log_ratio = (response_logprobs(model, input_ids, attention_mask, prompt_width, temperature)
                         - response_logprobs(reference, input_ids.to(reference.device),
                                             attention_mask.to(reference.device), prompt_width,
                                             temperature).to(model.device))  # (batch, R)
            totals += (log_ratio * tensors["response_mask"]).sum(-1).tolist()
    return mean(totals)


def heldout_perplexity(model, tokenizer, paths, max_tokens: int, seq_len: int | None = None,
                       batch_size: int = 4, text_field: str = "text") -> float:
    """exp(mean next-token loss) over the first max_tokens tokens of held-out pretraining text.

    The same blocks and loss as the pretraining stage's validation; seq_len defaults to the model's
    context (at most MAX_PPL_SEQ_LEN).
    """
    seq_len = seq_len or min(context_length(model) or MAX_PPL_SEQ_LEN, MAX_PPL_SEQ_LEN)
    batches = validation_batches(paths, tokenizer, seq_len, max_tokens, batch_size, text_field)
    was_training = model.training
    try:
        loss = evaluate(model, batches, model.device, None)
    finally:
        model.train(was_training)
    return math.exp(loss)


def best_indices(rewards: list[float], n: int) -> list[int]:
    """For prompt-major rewards with n samples per prompt, the row of each prompt's highest reward."""
    return [start + max(range(n), key=lambda j: rewards[start + j]) for start in range(0, len(rewards), n)]


def best_of_n(model, tokenizer, prompts: list, n: int, reward_judge, params: SamplingParams) -> list[str]:
    """For each prompt, the one of n sampled answers that `reward_judge(prompts, answers)` rewards most."""
    result = sample_answers(model, tokenizer, prompts, n, params)
    rewards = reward_judge(repeat_each(prompts, n), result.texts)
    return [result.texts[i] for i in best_indices(rewards, n)]
