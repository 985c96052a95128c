"""Sample from any causal-LM folder: greedy, beam search, or temperature / top-k / top-p sampling.

    chatforge generate --model runs/demo/sft/final --chat true --prompt "Who founded Brightwater?"
    chatforge generate --model runs/demo/pretrain/final --prompts_file fewshot.jsonl out=completions.jsonl

chat=true wraps each prompt as one user turn with the tokenizer's chat template (for SFT / RLHF
models); chat=false feeds the text as is (base models, few-shot prompts). A prompts file is JSONL
with one {"prompt": "..."} per line. A prompt that fills the model's context is an error; a
response is cut where prompt + response reach the context (max_position_embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from chatforge.config import opt
from chatforge.data.jsonl import write_jsonl
from chatforge.data.chat import chat_prompt_ids
from chatforge.data.formats import read_prompts
from chatforge.errors import ChatforgeError
from chatforge.generation import GenerationResult, SamplingParams, context_length, generate
from chatforge.models.io import load_causal_lm, load_tokenizer
from chatforge.models.templates import ensure_chat_template
from chatforge.runtime import resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Config:
    model: str = opt("", "model folder (config.json + model.safetensors + tokenizer files)")
    prompt: str | list[str] | None = opt(None, "one prompt, or a list of prompts")
    prompts_file: Path | None = opt(None, 'JSONL file, one {"prompt": "..."} per line (added after `prompt`)')
    chat: bool = opt(False, "wrap each prompt in the tokenizer's chat template (SFT/RLHF models); "
                            "false: raw text (base models, few-shot)")
    max_new_tokens: int = opt(128, "most tokens to generate per prompt")
    do_sample: bool = opt(False, "sample (temperature/top_k/top_p); false: greedy, or beam search if num_beams > 1")
    temperature: float = opt(1.0, "sampling temperature (> 0)")
    top_k: int = opt(0, "sample among the k most likely tokens (0: off)")
    top_p: float = opt(1.0, "sample among the smallest set of tokens with this much probability (1.0: off)")
    num_beams: int = opt(1, "beam search width (1: greedy / sampling)")
    length_penalty: float = opt(1.0, "beam score = sum logprob / length ** length_penalty")
    stop_token_ids: list[int] | None = opt(None, "ids that end a response (null: the tokenizer's EOS and its chat template's end of turn)")
    seed: int | None = opt(0, "sampling seed (null: nondeterministic)")
    batch_size: int = opt(16, "prompts decoded together")
    device: str = opt("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt("auto", "auto: bfloat16 on cuda, float32 on cpu")
    out: Path | None = opt(None, "optional JSONL output: prompt, completion, finished, num_tokens per line")

    def sampling_params(self) -> SamplingParams:
        """The decoding fields as the engine's SamplingParams."""
        return SamplingParams(
            max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, temperature=self.temperature,
            top_k=self.top_k, top_p=self.top_p, num_beams=self.num_beams, length_penalty=self.length_penalty,
            stop_token_ids=self.stop_token_ids, seed=self.seed,
        )

    def validate(self) -> None:
        """Check the fields before any model is loaded."""
        if not self.model:
            raise ChatforgeError("field 'model': set it to a model folder, e.g. model=runs/demo/sft/final")
        if self.prompt is None and self.prompts_file is None:
            raise ChatforgeError("no prompts: set prompt=\"...\" or prompts_file=FILE.jsonl")
        if self.prompts_file is not None and not Path(self.prompts_file).is_file():
            raise ChatforgeError(f"{self.prompts_file}: field 'prompts_file': file does not exist")
        if self.batch_size < 1:
            raise ChatforgeError(f"field 'batch_size': must be >= 1, got {self.batch_size}")
        self.sampling_params().validate()


def encode(tokenizer, text: str, chat: bool, model_dir: str) -> list[int]:
    """Token ids of one prompt: raw text (the tokenizer's default special tokens) or one chat user turn."""
    if not chat:
        return tokenizer(text)["input_ids"]
    ensure_chat_template(tokenizer, model_dir)
    return chat_prompt_ids(tokenizer, text)


def run(cfg: Config) -> GenerationResult:
    """Load the model, generate for every prompt, print prompt and completion, optionally write JSONL."""
    cfg.validate()
    sources = []  # (prompt text, where it came from) for error messages
    if cfg.prompt is not None:
        items = [cfg.prompt] if isinstance(cfg.prompt, str) else cfg.prompt
        sources += [(text, "field 'prompt'" + (f"[{i}]" if len(items) > 1 else "")) for i, text in enumerate(items)]
    if cfg.prompts_file is not None:
        for prompt, source in read_prompts(cfg.prompts_file):
            if not isinstance(prompt, str):
                raise ChatforgeError(f"{source}: field 'prompt': chatforge generate takes text prompts, "
                                     "not lists of messages")
            sources.append((prompt, source))

    device = resolve_device(cfg.device)
    dtype = DTYPES.get(cfg.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = load_causal_lm(cfg.model, dtype=dtype, device=device)  # a folder that is not a model fails here
    tokenizer = load_tokenizer(cfg.model)

    context = context_length(model)
    prompt_ids = []
    for text, source in sources:
        ids = encode(tokenizer, text, cfg.chat, cfg.model)
        if not ids:
            raise ChatforgeError(f"{source}: the prompt is empty")
        if context is not None and len(ids) >= context:
            raise ChatforgeError(
                f"{source}: the prompt is {len(ids)} tokens, but {cfg.model} has a context of {context} tokens "
                "(max_position_embeddings) and needs room for the response; shorten the prompt"
            )
        prompt_ids.append(ids)

    result = generate(model, tokenizer, prompt_ids, cfg.sampling_params(), batch_size=cfg.batch_size)

    for i, ((text, _), completion) in enumerate(zip(sources, result.texts)):
        status = "stopped" if result.finished[i] else "cut at the token limit"
        print(f"=== prompt {i + 1} ===\n{text}\n--- completion ({len(result.response_ids[i])} tokens, {status}) ---")
        print(completion, flush=True)
    if cfg.out is not None:
        out = write_jsonl(cfg.out, [dict(prompt=text, completion=result.texts[i], finished=result.finished[i],
                                         num_tokens=len(result.response_ids[i])) for i, (text, _) in enumerate(sources)])
        print(f"wrote {len(sources)} completions to {out}")
    return result
