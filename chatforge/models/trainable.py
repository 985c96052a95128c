"""Which parameters train: everything (the default), all but the lower N layers, or LoRA adapters (PEFT)."""

from __future__ import annotations

import copy

import torch

from chatforge.errors import ChatforgeError


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's list of transformer blocks (Llama `model.layers`, GPT-2 `transformer.h`, ...)."""
    expected = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == expected:
            return module
    raise ChatforgeError(f"cannot find the {expected} decoder layers of {type(model).__name__} to freeze")


def freeze_lower_layers(model, count: int) -> None:
    """Freeze the input embeddings and the lowest `count` blocks (InstructGPT froze much of the network in RL)."""
    if count <= 0:
        return
    layers = decoder_layers(model)
    if count > len(layers):
        raise ChatforgeError(f"field 'freeze_layers' = {count}, but the model has only {len(layers)} layers")
    embeddings = model.get_input_embeddings()
    # with tied embeddings the output head is the same tensor: freezing the input side freezes both
    for module in [embeddings, *layers[:count]]:
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def apply_lora(model, r: int, alpha: float, dropout: float, target_modules: str | list[str] = "all-linear"):
    """Wrap `model` with LoRA adapters of rank r; only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ChatforgeError("LoRA needs PEFT: pip install peft") from None
    task = "SEQ_CLS" if getattr(model.config, "num_labels", 0) == 1 and hasattr(model, "score") else "CAUSAL_LM"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type=task)
    return get_peft_model(model, config)


def configure_trainable(model, freeze_layers: int = 0, lora_r: int = 0, lora_alpha: float = 16.0,
                        lora_dropout: float = 0.0, lora_targets: str | list[str] = "all-linear"):
    """Apply the freezing / LoRA options of a stage config; return the model to train."""
    freeze_lower_layers(model, freeze_layers)
    if lora_r > 0:
        model = apply_lora(model, lora_r, lora_alpha, lora_dropout, lora_targets)
    return model


def plain_model(model):
    """The model as plain transformers weights: LoRA adapters merged into a copy, else the model itself."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model
