"""A hand-written one-token decode step for Llama-style models, used by `generation` in place of `model(...)`.

Why: on CPU a small model's decode step is dominated by per-operation overhead, not arithmetic. HF's
forward builds a mask, recomputes rotary embeddings, goes through the cache object, output recording and
attention-interface lookups in every layer, every token (about 3 ms a token for a 1M-parameter model).
This step does the same arithmetic with the fewest operations: q/k/v and gate/up projections fused into
one matmul each (bitwise the same results as separate ones), rotary cos/sin looked up from a table
built once, keys/values written straight into the preallocated cache buffers (`_PreallocatedLayer`).

Each operation mirrors HF's in order and dtype (RMSNorm in float32, rotate-half, SDPA with the same mask
and GQA packing), so greedy tokens and logprobs match the plain path. The prompt itself still goes through
`model(...)` (prefill); only the one-token steps come here.

Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM with full attention
(no sliding window shorter than the run), SiLU MLP, SDPA attention, plain nn.Linear layers (no PEFT/LoRA
wrappers, no quantized layers) and a rotary type that does not depend on the sequence length. Anything
else (GPT-2, Gemma, sliding windows, LoRA-wrapped actors, ...) returns None and takes the plain path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
# rotary types whose cos/sin change with the running length (recomputed by HF as the sequence grows)
LENGTH_DEPENDENT_ROPE = {"dynamic", "longrope"}


def unsupported_reason(model, capacity: int) -> str | None:
    """Why `model` cannot use the hand-written step for `capacity` positions (None: it can)."""
    config = model.config
    if type(model).__name__ not in SUPPORTED:
        return f"{type(model).__name__} is not one of {sorted(SUPPORTED)}"
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return f"attention implementation {getattr(config, '_attn_implementation', None)!r} is not sdpa"
    if getattr(config, "hidden_act", None) not in ("silu", "swish"):
        return f"activation {getattr(config, 'hidden_act', None)!r} is not silu"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or []):
        return "some layers use sliding-window attention"
    window = getattr(config, "sliding_window", None)
    if config.model_type == "mistral" and window is not None and window < capacity:
        return f"sliding window {window} is shorter than the run ({capacity} positions)"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope in LENGTH_DEPENDENT_ROPE:
        return f"rotary type {rope!r} depends on the sequence length"
    try:
        layers = model.model.layers
        linears = [model.lm_head] + [m for layer in layers for m in (
            layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
            layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]
        model.model.rotary_emb, model.model.norm, model.model.embed_tokens
    except AttributeError as exc:
        return f"unexpected module layout ({exc})"
    if any(type(m) is not nn.Linear for m in linears):
        return "a projection is not a plain nn.Linear (LoRA or quantized layers)"
    if type(model.model.embed_tokens) is not nn.Embedding:
        return "the embedding is not a plain nn.Embedding"
    return None


def _rms_norm(hidden: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """HF's LlamaRMSNorm, operation for operation (float32 statistics, weight applied in the input dtype)."""
    dtype = hidden.dtype
    if dtype == torch.float32 and norm.weight.dtype == torch.float32:  # one fused kernel, bitwise the same in float32
        return F.rms_norm(hidden, norm.weight.shape, norm.weight, norm.variance_epsilon)
    hidden = hidden.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * hidden.to(dtype)


def _cat_bias(*linears: nn.Linear) -> torch.Tensor | None:
    return torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None


class DecodeStep:
    """Logits for one new token per row, reading and writing the `_PreallocatedLayer` buffers of `cache`."""

    def __init__(self, model, cache, capacity: int):
        config = model.config
        attn = model.model.layers[0].self_attn
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.groups = self.heads // self.kv_heads
        self.cache, self.model = cache, model
        self.layers = []
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(dict(
                input_norm=layer.input_layernorm, post_norm=layer.post_attention_layernorm,
                qkv_weight=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                qkv_bias=_cat_bias(a.q_proj, a.k_proj, a.v_proj),
                o_proj=a.o_proj, q_norm=getattr(a, "q_norm", None), k_norm=getattr(a, "k_norm", None),
                gate_up_weight=torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                gate_up_bias=_cat_bias(m.gate_proj, m.up_proj), down_proj=m.down_proj,
            ))
        # (capacity, 2, head_dim): cos and a sign-folded sin, so rotate_half(x) * sin = swap_halves(x) * signed_sin
        weight = model.model.embed_tokens.weight
        positions = torch.arange(capacity, device=weight.device)[None]
        cos, sin = model.model.rotary_emb(weight[:1][None], positions)
        half = self.head_dim // 2
        signed_sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], -1)
        self.rope_table = torch.stack([cos[0], signed_sin], 1)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, length: int,
                 mask: torch.Tensor | None) -> torch.Tensor:
        """tokens, positions: (rows,); length: cache positions after this token; mask: (rows, length) bool or
        None (nothing padded). Returns float32 logits (rows, vocab)."""
        rows = tokens.shape[0]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        slot = length - 1
        qk_width, kv_width = (heads + kv_heads) * head_dim, kv_heads * head_dim
        rope = self.rope_table.index_select(0, positions)  # (rows, 2, head_dim)
        cos, sin = rope[:, None, 0], rope[:, None, 1]  # (rows, 1, head_dim)
        attn_mask = mask[:, None, None, :] if mask is not None else None
        hidden = F.embedding(tokens, self.model.model.embed_tokens.weight)  # (rows, hidden)
        for layer, cache_layer in zip(self.layers, self.cache.layers):
            residual = hidden
            hidden = _rms_norm(hidden, layer["input_norm"])
            qkv = F.linear(hidden, layer["qkv_weight"], layer["qkv_bias"])  # (rows, (heads + 2 kv_heads) head_dim)
            q_and_k = qkv[:, :qk_width].view(rows, heads + kv_heads, head_dim)
            if layer["q_norm"] is not None:  # Qwen3: RMSNorm over head_dim before rotary
                q_and_k = torch.cat([_rms_norm(q_and_k[:, :heads], layer["q_norm"]),
                                     _rms_norm(q_and_k[:, heads:], layer["k_norm"])], 1)
            swapped = q_and_k.view(rows, heads + kv_heads, 2, head_dim // 2).flip(2).view(q_and_k.shape)
            q_and_k = q_and_k * cos + swapped * sin
            value = qkv[:, qk_width: qk_width + kv_width].view(rows, kv_heads, head_dim)
            cache_layer.key_buffer[:, :, slot] = q_and_k[:, heads:]
            cache_layer.value_buffer[:, :, slot] = value
            keys = cache_layer.key_buffer[:, :, :length]
            values = cache_layer.value_buffer[:, :, :length]
            if attn_mask is None and self.groups > 1:  # as HF's sdpa_attention_forward: GQA in the kernel
                query = q_and_k[:, :heads, None]  # (rows, heads, 1, head_dim)
                out = F.scaled_dot_product_attention(query, keys, values, scale=self.scaling, enable_gqa=True)
            else:  # as HF's pack_gqa: a query's heads sharing a kv head become that head's query rows
                query = q_and_k[:, :heads].reshape(rows, kv_heads, self.groups, head_dim)
                out = F.scaled_dot_product_attention(query, keys, values, attn_mask=attn_mask, scale=self.scaling)
            hidden = residual + layer["o_proj"](out.reshape(rows, heads * head_dim))
            residual = hidden
            hidden = _rms_norm(hidden, layer["post_norm"])
            gate, up = F.linear(hidden, layer["gate_up_weight"], layer["gate_up_bias"]).chunk(2, -1)
            hidden = residual + layer["down_proj"](F.silu(gate) * up)
        for cache_layer in self.cache.layers:  # its length stays true: batch_select_indices rebuilds views from it
            cache_layer.length = length
        hidden = _rms_norm(hidden, self.model.model.norm)
        return self.model.lm_head(hidden).float()
