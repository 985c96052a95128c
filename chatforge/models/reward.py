"""Reward models: a causal LM with its unembedding replaced by a scalar head.

Saved as an ordinary `AutoModelForSequenceClassification` folder with one label. chatforge reads the
head at the LAST ATTENDED token of each sequence (found from the attention mask, so it does not
depend on the pad token differing from EOS) and adds `config.reward_bias`, the offset set after
training so that rewards of SFT samples have mean 0. (transformers' own pooled logits ignore the bias.)
The same backbone + head gives per-token values for the PPO critic. A model trained with
`likelihood_reward` also has `config.reward_lm_weight` (w): its reward adds w x the mean log-likelihood
of the response tokens under the tied embedding matrix (the LM head), so callers give the response mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from chatforge.data.chat import chat_prompt_ids, tokenize_chat
from chatforge.errors import ChatforgeError
from chatforge.models.io import check_model_dir, quiet_transformers
from chatforge.models.templates import load_chat_tokenizer


def build_reward_model(sft_dir, pad_token_id: int | None):
    """A one-label sequence classifier initialised from an SFT (causal LM) folder; the head starts at 0."""
    from transformers import AutoModelForSequenceClassification

    from transformers.utils import logging as hf_logging

    check_model_dir(sft_dir)
    quiet_transformers()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head is "missing from the checkpoint" by design: no warning
    try:
        model = AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1, use_safetensors=True)
    except Exception as exc:  # an architecture without a sequence-classification head, corrupt weights, ...
        raise ChatforgeError(f"{sft_dir}: cannot build a reward model on it: {type(exc).__name__}: {exc}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = pad_token_id
    model.config.reward_bias = 0.0
    head = score_head(model)
    torch.nn.init.zeros_(head.weight)  # all rewards start equal: no random preference before training
    return model


def check_reward_model_dir(path, field: str = "reward_model") -> Path:
    """The folder, if its config.json describes a one-label sequence classifier (reads no weights)."""
    path = check_model_dir(path)
    config = json.loads((path / "config.json").read_text())
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or config.get("num_labels", 1) != 1 \
            or len(config.get("id2label", {"0": ""})) != 1:
        raise ChatforgeError(
            f"{path}: field '{field}': not a reward model (config.json architectures {architectures}); give a "
            "folder written by `chatforge rm` (a one-label AutoModelForSequenceClassification)")
    return path


def load_reward_model(path, device=None):
    """Load a reward-model folder, refusing folders that are not one-label sequence classifiers."""
    from transformers import AutoModelForSequenceClassification

    path = check_reward_model_dir(path)
    quiet_transformers()
    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
    if device is not None:
        model.to(device)
    return model


def _unwrapped(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def score_head(model) -> torch.nn.Linear:
    """The scalar head (`score` in transformers' sequence classifiers)."""
    head = getattr(_unwrapped(model), "score", None)
    if head is None:
        raise ChatforgeError(f"{type(model).__name__} has no `score` head; use a *ForSequenceClassification model")
    return head


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The backbone's last hidden states (final norm applied): (batch, seq, hidden)."""
    inner = _unwrapped(model)
    backbone = getattr(inner, inner.base_model_prefix)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left or right padding alike
    return backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=False).last_hidden_state


def token_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The head applied at every position: (batch, seq). Values for the critic, rewards at the last token."""
    return score_head(model)(hidden_states(model, input_ids, attention_mask)).squeeze(-1).float()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row. # (batch,)"""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     response_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reward of each sequence: the head at its last attended token, plus config.reward_bias. # (batch,)

    A model trained with a likelihood weight (config.reward_lm_weight, see head_and_likelihood) also adds that
    weight times the mean log-likelihood of the response tokens, which response_mask (batch, seq) marks."""
    weight = lm_weight(model)
    if not weight:
        head = last_token(token_values(model, input_ids, attention_mask), attention_mask)
        return head + reward_bias(model)
    if response_mask is None:
        raise ChatforgeError("this reward model adds the response's likelihood (config.reward_lm_weight); "
                             "sequence_rewards needs the response_mask")
    head, likelihood = head_and_likelihood(model, input_ids, attention_mask, response_mask)
    return head + weight * likelihood + reward_bias(model)


def head_and_likelihood(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the head at the last attended token, the mean log p of the response tokens), both (batch,), one forward.

    The log-probabilities come from the tied embedding matrix: the SFT model's own LM head, so a reward that
    uses them can tell a likely answer (the fact the model knows) from an unlikely one. Logits are formed only
    at the positions that predict a response token (response_mask is 1 there), not over the whole sequence."""
    hidden = hidden_states(model, input_ids, attention_mask)  # (batch, seq, hidden)
    head = last_token(score_head(model)(hidden).squeeze(-1).float(), attention_mask)
    predicts = response_mask[:, 1:].bool()  # position t predicts token t + 1
    logits = (hidden[:, :-1][predicts] @ _unwrapped(model).get_input_embeddings().weight.T).float()  # (n, vocab)
    token_logprobs = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:][predicts][:, None]).squeeze(-1)
    rows = predicts.nonzero()[:, 0]  # the row of each response token
    totals = torch.zeros(len(input_ids), device=hidden.device).index_add(0, rows, token_logprobs)
    return head, totals / predicts.sum(1).clamp(min=1)


def last_token(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """values (batch, seq) read at each row's last attended position. # (batch,)"""
    return values.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)


def reward_bias(model) -> float:
    """config.reward_bias: the offset that centres the rewards of the training responses at 0."""
    return float(getattr(_unwrapped(model).config, "reward_bias", 0.0) or 0.0)


def lm_weight(model) -> float:
    """config.reward_lm_weight: the learned weight of the response's mean log-likelihood in the reward (0 = none)."""
    return float(getattr(_unwrapped(model).config, "reward_lm_weight", 0.0) or 0.0)


def check_tied_embeddings(model, field: str) -> None:
    """Refuse a field that needs the LM head when the model has none (only tied embeddings keep it)."""
    if not getattr(_unwrapped(model).config, "tie_word_embeddings", False):
        raise ChatforgeError(f"field '{field}' needs a model with tied input/output embeddings (a reward model "
                             "keeps no separate LM head); turn it off for this model")


def pad_right(sequences: list[list[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (batch, longest), padded on the right."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return ids.to(device), mask.to(device)


def chat_ids(tokenizer, prompt, response: str) -> list[int]:
    """Token ids of prompt + assistant response, rendered by the chat template, through its end-of-turn token."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    chat = tokenize_chat(tokenizer, messages + [{"role": "assistant", "content": response}])
    # end where a PPO rollout ends, so the head is read at the same token: ChatML and Gemma put a newline
    # after the end-of-turn token, which the policy never generates
    end = max((i + 1 for i, flag in enumerate(chat.loss_mask) if flag), default=len(chat.input_ids))
    return chat.input_ids[:end]


class RewardJudge:
    """Scores (prompt, response) pairs with a trained reward model (e.g. to pick SFT checkpoints)."""

    name = "reward_model"

    def __init__(self, path: str | Path, device=None, batch_size: int = 32):
        self.model = load_reward_model(path, device).eval()
        self.tokenizer = load_chat_tokenizer(path)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, prompts: list, responses: list[str]) -> list[float]:
        rewards = []
        device = next(self.model.parameters()).device
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(zip(prompts[start:start + self.batch_size], responses[start:start + self.batch_size]))
            sequences = [chat_ids(self.tokenizer, p, r) for p, r in chunk]
            ids, mask = pad_right(sequences, self.tokenizer.pad_token_id, device)
            response_mask = None
            if lm_weight(self.model):  # only a likelihood reward needs to know where the response starts
                response_mask = mask.clone()
                for row, (prompt, _) in enumerate(chunk):
                    response_mask[row, :len(chat_prompt_ids(self.tokenizer, prompt))] = 0
            rewards += sequence_rewards(self.model, ids, mask, response_mask).tolist()
        return rewards
