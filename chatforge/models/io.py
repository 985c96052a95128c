"""Load and save Hugging Face model folders, with errors that say what is wrong with the folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from chatforge.errors import ChatforgeError
from chatforge.models.stops import stop_token_ids

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def quiet_transformers() -> None:
    """No per-file progress bars from transformers: our own bars and errors stay readable."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def check_model_dir(path: str | os.PathLike) -> Path:
    """Raise a ChatforgeError unless `path` is a local HF model folder (config.json + safetensors)."""
    path = Path(path)
    if not path.exists():
        raise ChatforgeError(f"{path}: model folder does not exist")
    if not path.is_dir():
        raise ChatforgeError(f"{path}: expected a model folder, found a file")
    config_file = path / "config.json"
    if not config_file.exists():
        raise ChatforgeError(
            f"{path}: not a model folder (no config.json). Point it at a folder written by "
            "`save_pretrained` or by a chatforge stage (e.g. runs/demo/pretrain/final)."
        )
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ChatforgeError(f"{config_file}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ChatforgeError(f"{config_file}: field 'model_type' is missing; this is not a transformers model config")
    if not any((path / name).exists() for name in WEIGHT_FILES):
        raise ChatforgeError(
            f"{path}: no model.safetensors in the folder. chatforge loads safetensors weights only "
            "(never pickles); convert the checkpoint with `save_pretrained(safe_serialization=True)`."
        )
    return path


def load_causal_lm(path, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                   trust_remote_code: bool = False):
    """Load any AutoModelForCausalLM folder (safetensors only) onto `device`."""
    from transformers import AutoModelForCausalLM

    path = check_model_dir(path)
    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # corrupt weights, unknown architecture, ...: name the folder, not a stack
        raise ChatforgeError(f"{path}: transformers could not load it as a causal LM: "
                             f"{type(exc).__name__}: {exc}") from None
    if device is not None:
        model.to(device)
    return model


def load_tokenizer(path):
    """Load the tokenizer saved beside a model (or a tokenizer folder) with AutoTokenizer."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise ChatforgeError(
            f"{path}: no tokenizer.json / tokenizer_config.json. Train one with `chatforge tokenizer` "
            "or copy the model's tokenizer files into the folder."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (ValueError, OSError) as exc:
        raise ChatforgeError(f"{path}: could not load the tokenizer: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_same_tokenizer(tokenizer, path, other, other_path, field: str) -> None:
    """Fail unless `other` maps text to the same ids as `tokenizer` (same vocabulary and special tokens)."""
    if tokenizer.get_vocab() != other.get_vocab() or tokenizer.all_special_tokens != other.all_special_tokens:
        raise ChatforgeError(
            f"{other_path}: field '{field}': its tokenizer differs from the one of {path}; the models must "
            "share one tokenizer, since token ids (and their logprobs) pass between them. Train it from the same "
            "SFT model.")


def check_tokenizer_fits(tokenizer, model_dir, field: str = "model") -> None:
    """Fail before any weights load when the tokenizer has ids the model's embeddings lack (config.json vocab_size)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    rows = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if rows and len(tokenizer) > rows:
        raise ChatforgeError(
            f"{model_dir}: field '{field}': the tokenizer has {len(tokenizer)} tokens but the model's embeddings only "
            f"{rows} (config.json vocab_size), so ids from {rows} on would index past them. Use the tokenizer the "
            "model was trained with (the one saved in its folder).")


def write_generation_config(folder: Path, tokenizer) -> None:
    """Make generation_config.json stop where chatforge's decoder stops: eos_token_id = EOS + the template's
    end-of-turn token (+ any other stop id it already listed), pad_token_id = the tokenizer's pad. Its other
    fields (a hub model's sampling defaults) stay. Edited as JSON, not through GenerationConfig, whose save
    refuses an edited config that it would only warn about (e.g. a temperature with do_sample off)."""
    config_file = folder / "generation_config.json"
    if tokenizer is None or not config_file.exists():  # no generation config: a reward model or critic
        return
    config = json.loads(config_file.read_text())
    listed = config.get("eos_token_id")
    listed = listed if isinstance(listed, list) else [listed] if isinstance(listed, int) else []
    stops = stop_token_ids(tokenizer)
    stops += [token_id for token_id in listed if token_id not in stops]  # e.g. Llama 3.1's <|eom_id|>
    if stops:
        config["eos_token_id"] = stops if len(stops) > 1 else stops[0]
    if tokenizer.pad_token_id is not None:
        config["pad_token_id"] = int(tokenizer.pad_token_id)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_hf_folder(model, tokenizer, path, write_extra: Callable[[Path], None] | None = None,
                   card: str | None = None) -> Path:
    """Write model + tokenizer to `path` atomically: a temp folder, then rename; return `path`.

    generation_config.json gets the tokenizer's stop ids (write_generation_config), `card` (models.card)
    becomes README.md, and `write_extra(folder)` may add files (e.g. trainer state) before the rename.
    An interrupted save never leaves a half-written folder under the final name.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    quiet_transformers()
    unwrapped = getattr(model, "module", model)
    unwrapped.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    write_generation_config(tmp, tokenizer)
    if card is not None:
        (tmp / "README.md").write_text(card)
    if write_extra is not None:
        write_extra(tmp)
    if path.exists():
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    return path
