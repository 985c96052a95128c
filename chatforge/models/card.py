"""The model card (README.md) of a final model folder: Hugging Face's YAML metadata, then what the run did.

The stages pass what they know at save time (their base model, data files, final numbers); nothing is
made up, and the licence is left for the user, who knows the base model's and the data's terms.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Sequence

from chatforge.models.stops import stop_token_ids

CHAT_EXAMPLE = [{"role": "user", "content": "What is 2 plus 3?"}]


def chatforge_version() -> str:
    """The installed chatforge's version (the package's own when it runs from a source tree)."""
    try:
        return metadata.version("chatforge")
    except metadata.PackageNotFoundError:
        from chatforge import __version__

        return __version__


def _yaml_list(name: str, items: Sequence[str]) -> list[str]:
    # JSON strings are YAML double-quoted scalars: any path or name survives yaml.safe_load unchanged
    return [f"{name}:", *(f"- {json.dumps(str(item))}" for item in items)] if items else []


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(stage: str, tokenizer=None, *, base_model: str = "", data: Sequence[str] = (),
               metrics: dict | None = None, folder: str = "", reward_model: bool = False,
               version: str | None = None) -> str:
    """README.md text for a model folder written by `stage`; metrics: name -> number (None values are left out)."""
    front = ["---", "library_name: transformers",
             *([f"base_model: {json.dumps(str(base_model))}"] if base_model else []),
             *_yaml_list("tags", ["chatforge", stage, *(["reward-model"] if reward_model else [])]),
             *_yaml_list("datasets", data),
             'license: ""  # yours to fill in: the base model\'s and the data\'s licences decide it',
             *([] if reward_model else ["pipeline_tag: text-generation"]), "---"]
    body = [f"# {stage} model", "",
            f"Written by the `{stage}` stage of chatforge {version or chatforge_version()}"
            + (f", starting from `{base_model}`." if base_model else ", from a freshly initialised model."), ""]
    if data:
        body += ["Data read: " + ", ".join(f"`{item}`" for item in data) + ".", ""]
    numbers = {name: value for name, value in (metrics or {}).items() if value is not None}
    if numbers:
        body += ["The run's numbers when this folder was saved:", "", "| metric | value |", "|---|---|",
                 *(f"| {name} | {_number(value)} |" for name, value in numbers.items()), ""]
    body += ["## Use it with transformers", "", *usage(tokenizer, folder or "path/to/this/folder", reward_model)]
    return "\n".join(front + [""] + body) + "\n"


REWARD_USAGE = """```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained({path})
tokenizer = AutoTokenizer.from_pretrained({path})
chat = [{{"role": "user", "content": "What is 2 plus 3?"}}, {{"role": "assistant", "content": "5."}}]
inputs = tokenizer.apply_chat_template(chat, return_tensors="pt", return_dict=True)
reward = model(**inputs).logits[0, 0].item() + model.config.reward_bias
```

chatforge adds `config.reward_bias` (mean reward 0 on the training responses) to the head's score, and
`config.reward_lm_weight` times the response's mean log-likelihood when that weight is not 0
(`chatforge.models.reward.sequence_rewards`)."""

LM_USAGE = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained({path})
tokenizer = AutoTokenizer.from_pretrained({path})
{inputs}
output = model.generate(**inputs, max_new_tokens=64)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""
CHAT_INPUTS = f"""chat = {json.dumps(CHAT_EXAMPLE)}
inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)"""
TEXT_INPUTS = 'inputs = tokenizer("Once upon a time", return_tensors="pt")'


def usage(tokenizer, folder: str, reward_model: bool) -> list[str]:
    """Lines of the card's loading example: chat, plain text, or a reward model's score."""
    path = json.dumps(folder)
    if reward_model:
        return REWARD_USAGE.format(path=path).splitlines()
    chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    lines = LM_USAGE.format(path=path, inputs=CHAT_INPUTS if chat else TEXT_INPUTS).splitlines()
    stops = tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer)) if tokenizer is not None else []
    if stops:
        lines += ["", "`generate` stops at " + " or ".join(f"`{token}`" for token in stops)
                  + ": generation_config.json lists " + ("them" if len(stops) > 1 else "it") + " as `eos_token_id`"
                  + (", so a reply ends with its turn." if chat else ".")]
    return lines
