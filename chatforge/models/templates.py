"""A chat template for tokenizers that come without one (GPT-2 and other base models).

SFT, the reward model, PPO, eval and chat all render chats with the tokenizer's template. A model
folder whose tokenizer has none gets chatforge's own (the `chatforge tokenizer` stage's), with a
warning naming the folder, once per folder and process; stages that save the tokenizer save the
template with it, so later stages load it from their input folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from chatforge.errors import ChatforgeError
from chatforge.models.io import load_tokenizer
from chatforge.stages.tokenizer import CHAT_TEMPLATE, END_OF_TURN, ROLE_TOKENS

# chatforge's template with its role markers as text and the tokenizer's EOS ending each turn, for a
# tokenizer without chatforge's special tokens (new tokens would need rows the model's embeddings lack).
# The newline after each marker keeps BPE from merging "|>" with a reply that starts with punctuation.
TEXT_MARKERS_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

_warned: set[str] = set()


def ensure_chat_template(tokenizer, source) -> None:
    """Give `tokenizer` chatforge's chat template when it has none, saying so once per `source` (its folder)."""
    if getattr(tokenizer, "chat_template", None):
        return
    vocab = tokenizer.get_vocab()
    if all(token in vocab for token in (END_OF_TURN, *ROLE_TOKENS.values())):
        tokenizer.chat_template, kind = CHAT_TEMPLATE, f"chatforge's chat template ({END_OF_TURN} ends a turn)"
    elif tokenizer.eos_token is not None:
        tokenizer.chat_template = TEXT_MARKERS_TEMPLATE
        kind = f"chatforge's chat template with text role markers (<|user|> ...), {tokenizer.eos_token} ending a turn"
    else:
        raise ChatforgeError(f"{source}: the tokenizer has no chat template and no EOS token to end a turn with; "
                             "add a chat_template to its tokenizer_config.json (or chat_template.jinja)")
    key = str(Path(source).resolve())
    if key not in _warned:
        _warned.add(key)
        print(f"warning: {source}: the tokenizer has no chat template; using {kind}. Stages that save a model "
              "save this template with it", file=sys.stderr)


def load_chat_tokenizer(path):
    """load_tokenizer, plus chatforge's chat template when the folder's tokenizer has none."""
    tokenizer = load_tokenizer(path)
    ensure_chat_template(tokenizer, path)
    return tokenizer
