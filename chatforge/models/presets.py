"""Model presets: ordinary transformers Llama configs, from ~1M parameters up to GPT-2-124M size.

Parameter counts below are for a 2048-token vocabulary with tied embeddings (gpt2-124m: 50257).
"""

from __future__ import annotations

from chatforge.errors import ChatforgeError

PRESETS: dict[str, dict] = {
    # ~1.0M: the CPU demo model
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4),
    # ~3.4M
    "mini": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=6, num_attention_heads=6),
    # ~11M
    "small": dict(hidden_size=320, intermediate_size=864, num_hidden_layers=8, num_attention_heads=5),
    # ~30M
    "medium": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8),
    # ~124M with a 50257 vocabulary: GPT-2 small's width and depth
    "gpt2-124m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12),
}


def llama_config(preset: str, vocab_size: int, max_position_embeddings: int, bos_token_id: int | None,
                 eos_token_id: int, pad_token_id: int | None, **overrides):
    """A LlamaConfig for `preset`; `overrides` replace any of its fields (e.g. num_hidden_layers=2)."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ChatforgeError(f"unknown model preset '{preset}'; choose one of {sorted(PRESETS)}")
    fields = dict(PRESETS[preset])
    fields.update(overrides)
    heads = fields["num_attention_heads"]
    if fields["hidden_size"] % heads:
        raise ChatforgeError(f"model: hidden_size {fields['hidden_size']} is not divisible by "
                             f"num_attention_heads {heads}")
    fields.setdefault("num_key_value_heads", heads)
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        attention_dropout=0.0,
        **fields,
    )


def count_parameters(model, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters, counting tied weights once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
