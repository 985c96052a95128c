"""Chats -> token ids with a loss mask on assistant tokens, and packing of several chats per sequence.

The mask is found by rendering growing prefixes of the chat with the tokenizer's own chat template,
so it works for any template (no `{% generation %}` markers needed): the tokens between "everything
before assistant turn i, plus the assistant header" and "everything up to the end of turn i" are
turn i's, its end-of-turn token included (the model must learn to stop) and a newline after it not.
A template that rewrites earlier turns (Qwen3 drops their reasoning) has each turn learned as the
whole chat renders it. tests/families/ checks the mask on Llama 3, Qwen2/Qwen3, Mistral, Gemma and
GPT-2 style templates.

Packed rows restart position ids at every example and carry no attention mask; transformers then
builds a block-diagonal causal mask from the position ids, so no attention (and, since the last token
of each example has no target, no loss) crosses from one example into the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chatforge.data.formats import ReadStats, fit_to_context
from chatforge.errors import ChatforgeError
from chatforge.losses import IGNORE_INDEX


@dataclass
class TokenizedChat:
    """One chat as token ids, with 1 in `loss_mask` where the SFT loss counts the token."""

    input_ids: list[int]
    loss_mask: list[int]
    source: str = ""


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_prompt_ids(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Token ids of a prompt (a user message or a list of messages) followed by the assistant header."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return _render(tokenizer, messages, add_generation_prompt=True)


def tokenize_chat(tokenizer, messages: list[dict], source: str = "") -> TokenizedChat:
    """Token ids of the whole chat and a mask that is 1 on every assistant turn's tokens (but those of
    turns with "weight": 0, kept as context only)."""
    input_ids = _render(tokenizer, messages)
    loss_mask = [0] * len(input_ids)
    added_ids = set(tokenizer.added_tokens_decoder)
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1])
        end = _turn_end(tokenizer, through, len(before), added_ids)
        if input_ids[: len(before)] != before or through[: len(before)] != before:
            raise ChatforgeError(
                f"{source}: the tokenizer's chat template renders a chat's prefix differently from the "
                "chat itself, so assistant tokens cannot be located; use a template whose output for "
                "messages[:i] is a prefix of its output for messages")
        if input_ids[: len(through)] != through:
            # the template rewrites a turn once later turns follow (Qwen3 drops an earlier reply's
            # <think> reasoning): the turn is learned as the whole chat shows it, up to its end-of-turn token
            end_token = through[end - 1]
            end = next((p + 1 for p in range(len(before), len(input_ids)) if input_ids[p] == end_token), None)
            if end_token not in added_ids or end is None:
                raise ChatforgeError(
                    f"{source}: the tokenizer's chat template renders assistant turn {i} differently once later "
                    "turns follow, and the turn has no end-of-turn token to find it by in the whole chat")
        for position in range(len(before), end):
            loss_mask[position] = 1
    return TokenizedChat(input_ids, loss_mask, source)


def _turn_end(tokenizer, through: list[int], start: int, added_ids: set[int]) -> int:
    """Where an assistant turn rendered last (`through`, its tokens from `start`) ends: after its end-of-turn token.

    ChatML and Gemma put a newline after the end-of-turn token; the model never generates it (decoding
    stops at the end of turn), so it is not learned. Without an added token before the trailing
    whitespace (a template ending turns with text), the whole rendered turn is learned.
    """
    end = len(through)
    while end > start and through[end - 1] not in added_ids and not tokenizer.decode(through[end - 1:end]).strip():
        end -= 1
    return end if end > start and through[end - 1] in added_ids else len(through)


def fit_chat(chat: TokenizedChat, max_len: int, too_long: str, stats: ReadStats) -> TokenizedChat | None:
    """Apply the length rule to a tokenized chat: the last assistant turn stays whole; counted in stats."""
    if 1 not in chat.loss_mask:
        stats.skip("no assistant tokens")
        return None
    # the last assistant turn is the final run of 1s in the mask (a template may add tokens after it)
    last_start = max(i for i, flag in enumerate(chat.loss_mask) if flag)
    while last_start > 0 and chat.loss_mask[last_start - 1] == 1:
        last_start -= 1
    fit = fit_to_context(last_start, len(chat.input_ids) - last_start, max_len, too_long)
    if not stats.count_fit(fit):
        return None
    cut = len(chat.input_ids) - max_len
    if cut <= 0:
        return chat
    return TokenizedChat(chat.input_ids[cut:], chat.loss_mask[cut:], chat.source)


def pack(chats: list[TokenizedChat], max_len: int) -> list[list[int]]:
    """First-fit-decreasing bins of chat indices, each bin at most max_len tokens."""
    order = sorted(range(len(chats)), key=lambda i: -len(chats[i].input_ids))
    bins: list[list[int]] = []
    room: list[int] = []
    for index in order:
        size = len(chats[index].input_ids)
        for b, free in enumerate(room):
            if size <= free:
                bins[b].append(index)
                room[b] -= size
                break
        else:
            bins.append([index])
            room.append(max_len - size)
    return bins


def collate(rows: list[list[TokenizedChat]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Rows of one or more chats -> input_ids, labels, position_ids, each (batch, longest row).

    labels[t] is the token at t + 1 when that token is in the loss mask and belongs to the same chat.
    """
    width = max(sum(len(c.input_ids) for c in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for chat in row:
            n = len(chat.input_ids)
            ids = torch.tensor(chat.input_ids)
            input_ids[r, start:start + n] = ids
            position_ids[r, start:start + n] = torch.arange(n)
            targets = torch.where(torch.tensor(chat.loss_mask[1:]) == 1, ids[1:], IGNORE_INDEX)
            labels[r, start:start + n - 1] = targets
            start += n
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
