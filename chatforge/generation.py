"""Batched decoding for any Hugging Face causal LM: greedy, temperature / top-k / top-p sampling, beam search.

Our own loop over `model(...)` with a KV cache (not a wrapper over `model.generate`), because rollouts
are the hot path of PPO and HF's per-step machinery (logits processors, stopping criteria) costs time:

- prompts are LEFT padded, with an attention mask and position ids (cumsum of the mask), so a prompt's
  output does not depend on what else is in the batch;
- the prompt is run once (prefill); after that each step feeds one token per row through a KV cache
  (a DynamicCache whose layers are preallocated for prompt + new tokens, see `_PreallocatedLayer`);
- only the last position's logits are computed (`logits_to_keep=1`);
- the attention mask is allocated once for prompt + all new tokens and sliced, never concatenated;
- rows that hit a stop token are ignored, and leave the running batch (cache, mask and positions are
  shrunk) once a quarter of it is done: shrinking copies the cache, so it is not worth doing every step;
- for Llama / Mistral / Qwen2 / Qwen3 the one-token steps run `decode_step.DecodeStep` (the same arithmetic
  without HF's per-step plumbing); other models, any that step does not support, and a model with forward
  hooks (they watch model(...) calls) call `model(...)`, dropping done rows at once.

Conventions of `GenerationResult` (RL depends on them):

- `response_ids` and `logprobs` INCLUDE the stop token when one was hit (PPO needs the EOS logprob);
  `texts` do not (and skip special tokens).
- `logprobs[i][t]` is the log-probability of the chosen token under the distribution it was drawn
  from: log_softmax(logits / temperature) when sampling, BEFORE top-k / top-p filtering (the policy's
  own distribution, which is what the PPO ratio and the KL to the reference need); plain
  log_softmax(logits) for greedy and beam search (temperature is not used there).
- `finished[i]` is True when the response ended with a stop token, False when it was cut at
  `max_new_tokens` or at the model's context length (max_position_embeddings).

Streaming (a chat reply as it is written): `generate(..., on_token=f)` calls f for every token;
`TokenStream` turns that into an iterator (generation on another thread), and `IncrementalDecoder`
turns token ids into text pieces without splitting a multi-byte character.
"""

from __future__ import annotations

import inspect
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from chatforge.decode_step import DecodeStep, unsupported_reason
from chatforge.errors import ChatforgeError
from chatforge.models.stops import stop_token_ids

Prompt = str | Sequence[int]
TokenCallback = Callable[[int, int], None]
FAST_DECODE = True  # False: every step through model(...) (tests, A/B timing)
DROP_DONE_FRACTION = 0.25  # done rows leave the batch once they are this share of it


@dataclass
class SamplingParams:
    """How to pick tokens. num_beams > 1 is beam search (deterministic: temperature/top_k/top_p are not used)."""

    max_new_tokens: int = 64
    do_sample: bool = False  # False: greedy (num_beams == 1) or beam search (num_beams > 1)
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1.0: no nucleus filtering
    num_beams: int = 1
    length_penalty: float = 1.0  # beam score = sum logprob / len ** length_penalty
    stop_token_ids: list[int] | None = None  # None: the tokenizer's EOS + its template's end of turn; []: never stop
    seed: int | None = None  # None: torch's global RNG

    def validate(self) -> None:
        """Raise a ChatforgeError naming the field if a value is out of range."""
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 0, "must be >= 0"),
            ("temperature", self.temperature > 0, "must be > 0 (use do_sample=false for greedy)"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 turns it off)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1] (1 turns it off)"),
            ("num_beams", self.num_beams >= 1, "must be >= 1"),
            ("num_beams", not (self.num_beams > 1 and self.do_sample),
             "beam search is deterministic; set do_sample=false or num_beams=1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ChatforgeError(f"field '{name}': {rule}, got {getattr(self, name)!r}")


@dataclass
class GenerationResult:
    """Per prompt: its ids, the response ids (stop token included), their logprobs, done flag, text."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    logprobs: list[list[float]]
    finished: list[bool]
    texts: list[str]  # empty strings when no tokenizer was given
    pad_token_id: int = 0

    def __len__(self) -> int:
        return len(self.response_ids)

    def to_tensors(self, pad_token_id: int | None = None, device=None) -> dict[str, torch.Tensor]:
        """Padded tensors for RL: prompt_ids, prompt_mask (batch, P) left-padded; response_ids, response_mask,
        logprobs (batch, R) right-padded (logprobs 0 at padding).

        `torch.cat([prompt_ids, response_ids], 1)` with `torch.cat([prompt_mask, response_mask], 1)` is the
        rollout sequence (pad, prompt, response, pad) ready for a scoring forward pass.
        """
        pad = self.pad_token_id if pad_token_id is None else pad_token_id
        batch = len(self)
        prompt_width = max((len(p) for p in self.prompt_ids), default=0)
        response_width = max((len(r) for r in self.response_ids), default=0)
        prompt_ids = torch.full((batch, prompt_width), pad, dtype=torch.long)
        prompt_mask = torch.zeros((batch, prompt_width), dtype=torch.long)
        response_ids = torch.full((batch, response_width), pad, dtype=torch.long)
        response_mask = torch.zeros((batch, response_width), dtype=torch.long)
        logprobs = torch.zeros((batch, response_width), dtype=torch.float32)
        for i in range(batch):
            p, r = self.prompt_ids[i], self.response_ids[i]
            if p:
                prompt_ids[i, prompt_width - len(p):] = torch.tensor(p)
                prompt_mask[i, prompt_width - len(p):] = 1
            if r:
                response_ids[i, : len(r)] = torch.tensor(r)
                response_mask[i, : len(r)] = 1
                logprobs[i, : len(r)] = torch.tensor(self.logprobs[i])
        tensors = dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                       response_mask=response_mask, logprobs=logprobs)
        return {name: t.to(device) for name, t in tensors.items()} if device is not None else tensors


def default_stop_token_ids(tokenizer=None, model=None) -> list[int]:
    """The tokenizer's EOS plus its chat template's end-of-turn token (models.stops, as in a saved folder's
    generation_config.json); without a tokenizer, the model's generation config or config EOS."""
    ids: list[int] = []
    if tokenizer is not None:
        ids = stop_token_ids(tokenizer)
    elif model is not None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else getattr(model.config, "eos_token_id", None)
        ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    return ids


def encode_prompts(tokenizer, prompts: Prompt | Sequence[Prompt]) -> list[list[int]]:
    """Prompts as lists of token ids. Strings go through `tokenizer(text)` (its default special tokens, e.g. BOS)."""
    if isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], int)):
        prompts = [prompts]
    encoded = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if tokenizer is None:
                raise ChatforgeError(f"prompt {i} is text but no tokenizer was given; pass token ids or a tokenizer")
            prompt = tokenizer(prompt)["input_ids"]
        elif isinstance(prompt, torch.Tensor):
            prompt = prompt.tolist()
        encoded.append([int(t) for t in prompt])
    return encoded


def context_length(model) -> int | None:
    """The model's maximum sequence length (max_position_embeddings / n_positions), if it declares one."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def generate(model, tokenizer, prompts: Prompt | Sequence[Prompt], params: SamplingParams | None = None,
             batch_size: int | None = None, on_token: TokenCallback | None = None) -> GenerationResult:
    """Generate a response for each prompt (strings, or lists of token ids with tokenizer=None).

    batch_size: prompts per forward batch (None: all at once); prompts are grouped by length to waste
    less on padding, and results come back in the input order. Beam search runs one prompt at a time
    (its beams are the batch). on_token(prompt_index, token_id) is called for every new token
    (greedy / sampling only), e.g. to stream a chat reply. A response is cut where prompt + response
    would pass the model's context (finished=False). The model runs in eval mode; its mode is restored.
    """
    params = params or SamplingParams()
    params.validate()
    if on_token is not None and params.num_beams > 1:
        raise ChatforgeError("streaming (on_token) works with greedy and sampling only, not beam search")
    prompt_ids = encode_prompts(tokenizer, prompts)
    stop_ids = params.stop_token_ids if params.stop_token_ids is not None else default_stop_token_ids(tokenizer, model)
    context = context_length(model)
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise ChatforgeError(f"prompt {i} is empty (no tokens); give it at least one token")
        if context is not None and len(ids) >= context:
            raise ChatforgeError(
                f"prompt {i} has {len(ids)} tokens, but the model's context is {context} tokens "
                "(max_position_embeddings), leaving no room for a response; shorten the prompt"
            )
    pad_id = _pad_token_id(tokenizer, model, stop_ids)
    responses: list[list[int]] = [[] for _ in prompt_ids]
    logprobs: list[list[float]] = [[] for _ in prompt_ids]
    finished = [False] * len(prompt_ids)

    was_training = model.training
    model.eval()  # dropout off: rollouts must come from the policy being scored
    try:
        with torch.inference_mode():
            if params.num_beams > 1:
                for i, ids in enumerate(prompt_ids):
                    responses[i], logprobs[i], finished[i] = _beam_search(model, ids, params, stop_ids, context)
            else:
                generator = None
                if params.seed is not None:
                    generator = torch.Generator(device=model.device).manual_seed(params.seed)
                # longest first, so each batch holds prompts of similar length (less padding)
                order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
                size = batch_size or max(len(order), 1)
                for start in range(0, len(order), size):
                    chunk = order[start:start + size]
                    outputs = _decode_batch(model, [prompt_ids[i] for i in chunk], chunk, params, stop_ids,
                                            context, pad_id, generator, on_token)
                    for i, (ids, lps, done) in zip(chunk, outputs):
                        responses[i], logprobs[i], finished[i] = ids, lps, done
    finally:
        model.train(was_training)

    texts = [""] * len(prompt_ids)
    if tokenizer is not None:
        texts = [tokenizer.decode(ids[:-1] if done else ids, skip_special_tokens=True)
                 for ids, done in zip(responses, finished)]
    return GenerationResult(prompt_ids, responses, logprobs, finished, texts, pad_id)


class _Cancelled(Exception):
    """Raised inside on_token to end a generation whose TokenStream was closed."""


class TokenStream:
    """`generate` on another thread, seen as an iterator of (prompt_index, token_id) as tokens are picked.

    The tokens, and `result` (set when the iteration ends), are exactly what `generate` returns for the
    same arguments (greedy / sampling only). close() ends the generation at its next token (result
    stays None). `executor` runs the generation (none: a new thread); a server passes one one-worker
    executor so that requests are decoded one at a time.
    """

    def __init__(self, model, tokenizer, prompts: Prompt | Sequence[Prompt], params: SamplingParams | None = None,
                 batch_size: int | None = None, executor=None):
        params = params or SamplingParams()
        params.validate()
        if params.num_beams > 1:
            raise ChatforgeError("streaming works with greedy and sampling only, not beam search (num_beams > 1)")
        self.stop_token_ids = (params.stop_token_ids if params.stop_token_ids is not None
                               else default_stop_token_ids(tokenizer, model))
        self.result: GenerationResult | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()  # (index, token), then ("done" | "failed", value)
        self._cancelled = threading.Event()

        def work():
            try:
                if self._cancelled.is_set():  # closed while waiting for the executor
                    raise _Cancelled
                result = generate(model, tokenizer, prompts, params, batch_size, on_token=self._push)
                self._events.put(("done", result))
            except BaseException as exc:  # handed to the consumer's thread, raised there
                self._events.put(("failed", exc))

        if executor is None:
            threading.Thread(target=work, daemon=True).start()
        else:
            executor.submit(work)

    def _push(self, index: int, token: int) -> None:
        if self._cancelled.is_set():
            raise _Cancelled
        self._events.put((index, token))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        while True:
            kind, value = self._events.get()
            if kind == "done":
                self.result = value
                return
            if kind == "failed":
                if isinstance(value, _Cancelled):
                    return
                raise value
            yield kind, value

    def close(self) -> None:
        """Stop generating (at the next token); the iteration ends."""
        self._cancelled.set()

    def __enter__(self) -> "TokenStream":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class IncrementalDecoder:
    """Token ids in, new text out: decodes the growing sequence and returns the suffix it adds.

    A character whose UTF-8 bytes span several tokens decodes to U+FFFD until its last byte comes, so
    a trailing U+FFFD is held back; flush() gives whatever is left at the end.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.token_ids: list[int] = []
        self.text = ""  # the decoded text handed out so far

    def add(self, token_id: int) -> str:
        """Append a token; return the new text it completes (may be empty)."""
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=self.skip_special_tokens)
        if text.endswith("\ufffd"):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end)."""
        return self._advance(self.tokenizer.decode(self.token_ids, skip_special_tokens=self.skip_special_tokens))

    def _advance(self, text: str) -> str:
        # decoding a longer sequence extends the shorter one's text (byte-level BPE, no clean-up of spaces),
        # so the new part is the suffix past what was handed out
        piece = text[len(self.text):]
        self.text = text
        return piece


def _pad_token_id(tokenizer, model, stop_ids: list[int]) -> int:
    """Any id works for left padding (it is masked out); prefer the tokenizer's pad, then EOS."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None),
                      model.config.pad_token_id if hasattr(model.config, "pad_token_id") else None,
                      stop_ids[0] if stop_ids else None):
        if isinstance(candidate, int):
            return candidate
    return 0


class _PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values live in a buffer sized for prompt + every new token.

    HF's DynamicLayer concatenates the whole cache every step (O(length) copying per token: 20-30% of
    decode time at a few hundred tokens on CPU); here a step writes one slot and `keys`/`values` are
    views of the filled part.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        # (batch, heads, capacity, head_dim); keys and values may differ in heads / head_dim (e.g. MLA)
        batch, key_heads, _, key_dim = key_states.shape
        _, value_heads, _, value_dim = value_states.shape
        self.key_buffer = key_states.new_empty((batch, key_heads, self.capacity, key_dim))
        self.value_buffer = value_states.new_empty((batch, value_heads, self.capacity, value_dim))
        self.is_initialized = True

    def _refresh_views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache full: {end} positions for a buffer of {self.capacity}")
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        self.length = 0
        if self.is_initialized:
            self._refresh_views()

    def crop(self, tokens_to_remove: int) -> None:
        self.length = max(self.length - abs(tokens_to_remove), 0)
        if self.is_initialized:
            self._refresh_views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self._refresh_views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx.to(self.device) if self.is_initialized else beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._refresh_views()


def _new_cache(model, capacity: int) -> DynamicCache:
    """A DynamicCache for `model`, preallocated for `capacity` positions when every layer is plain full attention.

    Sliding-window / linear-attention layers keep HF's own layer classes (they manage their own size).
    """
    cache = DynamicCache(config=model.config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [_PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


def _forward_kwargs(model) -> set[str]:
    """Names the model's forward takes; a PEFT wrapper's forward hides them behind **kwargs, so ask its base model."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(target.forward).parameters)


def _last_logits(model, accepted: set[str], input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
    """Logits of the last position, in float32 (log_softmax of bf16 logits loses too much). # (rows, vocab)"""
    # transformers renamed past_key_values to cache (5.2x warns on the old name; it goes in 5.40)
    cache_arg = "cache" if "cache" in accepted else "past_key_values"
    kwargs = {"attention_mask": attention_mask, cache_arg: cache, "use_cache": True}
    if "position_ids" in accepted:
        kwargs["position_ids"] = position_ids
    if "logits_to_keep" in accepted:  # skip the vocab projection of every prompt position
        kwargs["logits_to_keep"] = 1
    return model(input_ids, **kwargs).logits[:, -1, :].float()


def _pick(logits: torch.Tensor, params: SamplingParams, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose one token per row; return (tokens, their logprobs), both (rows,)."""
    if not params.do_sample:
        tokens = logits.argmax(-1)
        # log_softmax at one index = logit - logsumexp: no (rows, vocab) log_softmax needed
        chosen = logits.gather(-1, tokens[:, None]).squeeze(-1) - logits.logsumexp(-1)
        return tokens, chosen
    logprobs = torch.log_softmax(logits / params.temperature, dim=-1)  # (rows, vocab)
    candidates, candidate_ids = logprobs, None
    vocab = logprobs.shape[-1]
    if 0 < params.top_k < vocab:
        candidates, candidate_ids = logprobs.topk(params.top_k, dim=-1)  # sorted, (rows, k)
    if params.top_p < 1.0:
        if candidate_ids is None:
            candidates, candidate_ids = logprobs.sort(dim=-1, descending=True)
        probs = candidates.softmax(-1)
        # drop a token when the ones before it already cover top_p (the top token always stays)
        outside = probs.cumsum(-1) - probs > params.top_p
        candidates = candidates.masked_fill(outside, float("-inf"))
    choice = sample_rows(candidates.softmax(-1), generator)  # (rows,)
    tokens = candidate_ids.gather(-1, choice[:, None]).squeeze(-1) if candidate_ids is not None else choice
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def sample_rows(probs: torch.Tensor, generator) -> torch.Tensor:
    """One index per row of `probs` (rows, n), drawn with those probabilities: inverse-CDF sampling, one uniform
    number a row. torch.multinomial on CPU took ~10x longer at 64 rows of 2k (it draws far more randomness)."""
    cdf = probs.cumsum(-1)
    drawn = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cdf[:, -1:]
    index = torch.searchsorted(cdf, drawn, right=True).squeeze(-1)  # cdf[i-1] <= u < cdf[i]: never a 0-prob index
    # u can round up to the total; then the last index may have probability 0: take the likeliest instead
    return torch.where(index < probs.shape[-1], index, probs.argmax(-1))


def _decode_batch(model, prompts: list[list[int]], indices: list[int], params: SamplingParams,
                  stop_ids: list[int], context: int | None, pad_id: int, generator,
                  on_token: TokenCallback | None) -> list[tuple[list[int], list[float], bool]]:
    """Greedy / sampling for one batch of prompts; per prompt (response ids, logprobs, finished)."""
    device = model.device
    batch = len(prompts)
    prompt_lens = torch.tensor([len(p) for p in prompts])
    width = int(prompt_lens.max())
    row_limit = torch.full((batch,), params.max_new_tokens)  # per row: tokens it may still add
    if context is not None:
        row_limit = row_limit.clamp(max=context - prompt_lens)
    max_steps = int(row_limit.max())
    if max_steps == 0:
        return [([], [], False) for _ in prompts]

    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    # one mask for prompt + every new token, sliced each step instead of concatenated;
    # new positions are always attended (finished rows are dropped or ignored, never masked)
    mask = torch.ones((batch, width + max_steps), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, : width - len(prompt)] = False
    position_ids = (mask[:, :width].long().cumsum(-1) - 1).clamp(min=0)  # (batch, width)
    input_ids, mask, position_ids = input_ids.to(device), mask.to(device), position_ids.to(device)
    padded = bool(prompt_lens.min() < width)  # no padding: attention needs no mask at all (as HF)
    stop = torch.tensor(stop_ids, dtype=torch.long, device=device)

    # -1 marks "not generated", so a pad id that is also a stop id is never mistaken for a stop
    out_tokens = torch.full((batch, max_steps), -1, dtype=torch.long, device=device)
    out_logprobs = torch.zeros((batch, max_steps), dtype=torch.float32, device=device)
    rows = torch.arange(batch, device=device)  # running row -> row of this batch
    running = torch.ones(batch, dtype=torch.bool, device=device)  # (running,) False once a row is done
    next_position = prompt_lens.to(device)  # (running,) position of the token fed next
    limit = row_limit.to(device)  # (running,)

    accepted = _forward_kwargs(model)
    capacity = width + max_steps
    cache = _new_cache(model, capacity)
    logits = _last_logits(model, accepted, input_ids, mask[:, :width], position_ids, cache)
    # a hook on the model watches every model(...) call (serve's logprobs, timing): keep the plain loop for it,
    # one forward per step over exactly the running rows, in order
    hooked = bool(model._forward_hooks or model._forward_pre_hooks)
    fast_step = None if hooked else _fast_step(model, cache, capacity)
    drop_fraction = 0.0 if hooked else DROP_DONE_FRACTION
    for step in range(max_steps):
        tokens, token_logprobs = _pick(logits, params, generator)
        out_tokens[rows, step] = tokens.where(running, -1)
        out_logprobs[rows, step] = token_logprobs
        if on_token is not None:
            for row, token, live in zip(rows.tolist(), tokens.tolist(), running.tolist()):
                if live:
                    on_token(indices[row], token)
        if step + 1 == max_steps:
            break
        done = limit <= step + 1
        if stop.numel():
            done |= torch.isin(tokens, stop)
        running &= ~done
        live = int(running.sum())  # one host sync per step, as in HF's own loop
        if live == 0:
            break
        # done rows keep being computed (their tokens are ignored) until dropping them pays for
        # copying the cache: when DROP_DONE_FRACTION of the running rows are done
        if len(rows) > live and len(rows) - live >= drop_fraction * len(rows):
            keep = running.nonzero().squeeze(-1)
            rows, tokens, next_position, limit = rows[keep], tokens[keep], next_position[keep], limit[keep]
            running, mask = running[keep], mask[keep]
            padded = padded and not bool(mask[:, :width].all())
            cache.batch_select_indices(keep)
        length = width + step + 1
        if fast_step is not None:
            logits = fast_step(tokens, next_position, length, mask[:, :length] if padded else None)
        else:
            # a done row's position may pass the context (learned position tables): clamp, it is ignored
            positions = next_position if context is None else next_position.clamp(max=context - 1)
            logits = _last_logits(model, accepted, tokens[:, None], mask[:, :length], positions[:, None], cache)
        next_position = next_position + 1

    return _collect(out_tokens.cpu(), out_logprobs.cpu(), stop_ids)


def _fast_step(model, cache, capacity: int):
    """The hand-written decode step (decode_step.DecodeStep) when the model supports it, else None."""
    if not FAST_DECODE or unsupported_reason(model, capacity) is not None:
        return None
    if not all(isinstance(layer, _PreallocatedLayer) for layer in cache.layers):
        return None
    return DecodeStep(model, cache, capacity)


def _collect(out_tokens: torch.Tensor, out_logprobs: torch.Tensor, stop_ids: list[int]):
    """Cut each row of the (batch, steps) buffers after its first stop token (or its last generated token)."""
    results = []
    stop_set = set(stop_ids)
    for ids, lps in zip(out_tokens.tolist(), out_logprobs.tolist()):
        length = next((t for t, token in enumerate(ids) if token == -1), len(ids))
        stopped_at = next((t for t in range(length) if ids[t] in stop_set), None)
        if stopped_at is not None:
            length = stopped_at + 1
        results.append((ids[:length], lps[:length], stopped_at is not None))
    return results


def _beam_search(model, prompt: list[int], params: SamplingParams, stop_ids: list[int],
                 context: int | None) -> tuple[list[int], list[float], bool]:
    """Beam search for one prompt, its beams batched; return the best (ids, logprobs, finished).

    score = sum of token logprobs / len ** length_penalty, len counting the response tokens (stop
    included). Stops like HF's early_stopping=False: once num_beams hypotheses have finished and the
    best running beam, at its current length, scores below the worst of them.
    """
    num_beams, penalty = params.num_beams, params.length_penalty
    device = model.device
    steps = params.max_new_tokens if context is None else min(params.max_new_tokens, context - len(prompt))
    if steps <= 0:
        return [], [], False
    stop_set = set(stop_ids)
    accepted = _forward_kwargs(model)
    cache = _new_cache(model, len(prompt) + steps)
    input_ids = torch.tensor([prompt], device=device)
    position_ids = torch.arange(len(prompt), device=device)[None]
    logits = _last_logits(model, accepted, input_ids, None, position_ids, cache)  # (1, vocab)
    beam_scores = torch.zeros(1, device=device)  # (beams,) running sum of logprobs
    beam_tokens: list[list[int]] = [[]]
    beam_logprobs: list[list[float]] = [[]]
    hypotheses: list[tuple[float, list[int], list[float]]] = []  # finished, best first, at most num_beams

    for step in range(steps):
        logprobs = torch.log_softmax(logits, dim=-1)  # (beams, vocab)
        vocab = logprobs.shape[-1]
        totals = (beam_scores[:, None] + logprobs).view(-1)
        # 2 * num_beams candidates: enough to refill num_beams running beams even if some end here
        top_scores, top_index = totals.topk(min(2 * num_beams, totals.numel()))
        top_beam = (top_index // vocab).tolist()
        top_token = (top_index % vocab).tolist()
        top_logprob = logprobs.view(-1)[top_index].tolist()
        next_beams = []
        candidates = zip(top_scores.tolist(), top_beam, top_token, top_logprob)
        for rank, (score, beam, token, logprob) in enumerate(candidates):
            if token in stop_set:
                if rank < num_beams:  # as in HF: an ending ranked below the beam width is not kept
                    hypotheses.append((score / (step + 1) ** penalty, beam_tokens[beam] + [token],
                                       beam_logprobs[beam] + [logprob]))
                continue
            next_beams.append((score, beam, token, logprob))
            if len(next_beams) == num_beams:
                break
        hypotheses = sorted(hypotheses, key=lambda h: -h[0])[:num_beams]
        if not next_beams:
            break
        beam_scores = torch.tensor([b[0] for b in next_beams], device=device)
        beam_tokens = [beam_tokens[b[1]] + [b[2]] for b in next_beams]
        beam_logprobs = [beam_logprobs[b[1]] + [b[3]] for b in next_beams]
        best_running = next_beams[0][0] / (step + 1) ** penalty
        if len(hypotheses) >= num_beams and best_running <= hypotheses[-1][0]:
            beam_tokens = []  # the running beams can no longer win
            break
        if step + 1 == steps:
            break
        # each surviving beam continues its parent's cache (the first step copies the prompt's)
        cache.reorder_cache(torch.tensor([b[1] for b in next_beams], device=device))
        tokens = torch.tensor([[b[2]] for b in next_beams], device=device)  # (beams, 1)
        position_ids = torch.full((len(next_beams), 1), len(prompt) + step, device=device)
        logits = _last_logits(model, accepted, tokens, None, position_ids, cache)

    candidates = [(score, ids, lps, True) for score, ids, lps in hypotheses]
    for score, ids, lps in zip(beam_scores.tolist(), beam_tokens, beam_logprobs):
        if ids:  # beams still running at the end compete too, unfinished
            candidates.append((score / len(ids) ** penalty, ids, lps, False))
    if not candidates:
        return [], [], False
    _, ids, lps, done = max(candidates, key=lambda c: c[0])
    return ids, lps, done
