"""The token ids a chat model's reply ends at: the tokenizer's EOS and the token that closes an assistant turn.

The end-of-turn token is read from the chat template itself (render a reply, see which special token
follows it), so any template works: chatforge's `<|end|>`, ChatML `<|im_end|>`, Llama 3 `<|eot_id|>`,
Gemma `<end_of_turn>`, Llama 2 / Mistral `</s>`. chatforge's decoder and the generation_config.json of
every saved folder both take their stop ids from here, so they cannot disagree.
"""

from __future__ import annotations

PROBE_REPLY = "chatforge-stop-probe"  # a reply no template rewrites (no spaces to strip, no markup)


def special_tokens(tokenizer) -> dict[str, int]:
    """Every special token of the tokenizer (named ones and added tokens marked special), text -> id."""
    found = {token: int(token_id) for token, token_id in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids)}
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if added.special:
            found.setdefault(added.content, int(token_id))
    return found


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special token the chat template writes right after an assistant reply ([] without a template)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return []
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": PROBE_REPLY}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # noqa: BLE001 a template that needs other roles or variables: no turn end can be read off it
        return []
    at = text.rfind(PROBE_REPLY)
    if at < 0:
        return []
    tail = text[at + len(PROBE_REPLY):]
    # the first special token after the reply closes the turn; at one position the longest match wins
    hits = [(tail.find(token), -len(token), token_id)
            for token, token_id in special_tokens(tokenizer).items() if token and token in tail]
    return [min(hits)[2]] if hits else []


def stop_token_ids(tokenizer) -> list[int]:
    """EOS first (as config.json and the tokenizer name it), then the end-of-turn token if it is another one."""
    ids = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
    return ids + [token_id for token_id in end_of_turn_ids(tokenizer) if token_id not in ids]
