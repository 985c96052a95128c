"""Stage 1: train a byte-level BPE tokenizer (HF `tokenizers`) with chat special tokens.

The result is a folder that `transformers.AutoTokenizer.from_pretrained` loads, with a chat
template, so `apply_chat_template` works on it:

    <|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>

`<|endoftext|>` separates pretraining documents and is the EOS token; `<|end|>` ends a chat turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chatforge.config import opt, save_config
from chatforge.data.corpus import iter_documents
from chatforge.errors import ChatforgeError

EOS = "<|endoftext|>"
PAD = "<|pad|>"
END_OF_TURN = "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [EOS, PAD, END_OF_TURN, *ROLE_TOKENS.values()]

# {% generation %} marks assistant text, so `return_assistant_tokens_mask=True` gives the SFT loss mask.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{%- else -%}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


@dataclass
class Config:
    corpus: list[str] = opt([], "corpus files or folders (.txt, .jsonl, .parquet) to learn merges from")
    out_dir: str = opt("runs/tokenizer", "where the tokenizer folder is written")
    vocab_size: int = opt(2048, "vocabulary size including the 256 byte symbols and the special tokens")
    min_frequency: int = opt(2, "a pair must occur this often to be merged")
    text_field: str = opt("text", "JSONL/parquet field holding a document's text")
    max_documents: int = opt(0, "learn from at most this many documents (0 = all)")
    model_max_length: int = opt(2048, "the context length written into the tokenizer config")

    def validate(self):
        if not self.corpus:
            raise ChatforgeError("tokenizer: field 'corpus' is empty; give corpus=PATH (a file or folder)")
        if self.vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
            raise ChatforgeError(f"tokenizer: field 'vocab_size' = {self.vocab_size} is too small; "
                                 f"it needs at least {256 + len(SPECIAL_TOKENS) + 1} (bytes + special tokens)")


def build_tokenizer(texts, vocab_size: int, min_frequency: int = 2, model_max_length: int = 2048):
    """Train byte-level BPE on an iterable of strings; return a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        # every byte is in the vocabulary, so no text is ever out of vocabulary
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[END_OF_TURN, *ROLE_TOKENS.values()],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def run(cfg: Config) -> Path:
    """Train the tokenizer on cfg.corpus and save it to cfg.out_dir; return the folder."""
    documents = iter_documents(cfg.corpus, text_field=cfg.text_field)
    count = 0

    def texts():
        nonlocal count
        for doc in documents:
            count += 1
            yield doc
            if cfg.max_documents and count >= cfg.max_documents:
                return

    tokenizer = build_tokenizer(texts(), cfg.vocab_size, cfg.min_frequency, cfg.model_max_length)
    if count == 0:
        raise ChatforgeError(f"tokenizer: the corpus {cfg.corpus} holds no documents")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    save_config(cfg, out / "chatforge_tokenizer.yaml")
    print(f"tokenizer: {len(tokenizer)} tokens learned from {count} documents -> {out}")
    return out
