"""Sequence packing: a document stream becomes fixed-length blocks of tokens for next-token prediction.

Documents are tokenized in batches, joined with EOS and cut into blocks of seq_len + 1 tokens
(inputs = block[:-1], targets = block[1:]); nothing is padded and nothing is lost but the tail.
A seeded shuffle buffer mixes blocks while keeping memory bounded, so corpora larger than memory
stream through. The order is a pure function of (seed, epoch), so a resumed run can skip exactly
the blocks it already consumed.
"""

from __future__ import annotations

import itertools
import random
from typing import Iterator

import torch

from chatforge.data.corpus import iter_documents
from chatforge.errors import ChatforgeError
from chatforge.losses import IGNORE_INDEX


def token_stream(paths, tokenizer, text_field: str, docs_per_batch: int = 256) -> Iterator[list[int]]:
    """Yield the token ids of each document followed by EOS."""
    eos = tokenizer.eos_token_id
    documents = iter_documents(paths, text_field)
    while True:
        batch = list(itertools.islice(documents, docs_per_batch))
        if not batch:
            return
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            yield ids + [eos]


def _blocks(paths, tokenizer, seq_len: int, text_field: str) -> Iterator[list[int]]:
    """Cut the joined token stream into blocks of seq_len + 1 tokens (one token overlap)."""
    buffer: list[int] = []
    for ids in token_stream(paths, tokenizer, text_field):
        buffer.extend(ids)
        while len(buffer) >= seq_len + 1:
            yield buffer[: seq_len + 1]
            # the last target of this block is the first input of the next one
            del buffer[:seq_len]


class PackedBlocks:
    """An endless, shuffled stream of (seq_len + 1)-token blocks over the corpus, epoch after epoch."""

    def __init__(self, paths, tokenizer, seq_len: int, text_field: str = "text",
                 shuffle_buffer: int = 2048, seed: int = 0):
        self.paths, self.tokenizer, self.seq_len = paths, tokenizer, seq_len
        self.text_field, self.shuffle_buffer, self.seed = text_field, shuffle_buffer, seed

    def epoch(self, epoch: int) -> Iterator[list[int]]:
        """The blocks of one pass over the corpus, in the shuffled order of that epoch."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        pool: list[list[int]] = []
        for block in _blocks(self.paths, self.tokenizer, self.seq_len, self.text_field):
            if len(pool) < self.shuffle_buffer:
                pool.append(block)
                continue
            index = rng.randrange(len(pool))
            yield pool[index]
            pool[index] = block
        rng.shuffle(pool)
        yield from pool

    def __iter__(self) -> Iterator[list[int]]:
        for epoch in itertools.count():
            produced = 0
            for block in self.epoch(epoch):
                produced += 1
                yield block
            if produced == 0:
                raise ChatforgeError(
                    f"{self.paths}: the corpus is shorter than one block of {self.seq_len + 1} tokens; "
                    "add text or lower seq_len")

    def batches(self, batch_size: int, skip_blocks: int = 0) -> Iterator[torch.Tensor]:
        """Yield (batch_size, seq_len + 1) LongTensors, after skipping `skip_blocks` blocks (for resume)."""
        stream = itertools.islice(iter(self), skip_blocks, None)
        while True:
            yield torch.tensor(list(itertools.islice(stream, batch_size)), dtype=torch.long)


def validation_batches(paths, tokenizer, seq_len: int, max_tokens: int, batch_size: int,
                       text_field: str = "text") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed held-out (inputs, targets) batches covering up to max_tokens tokens, in file order.

    The last block may be short; its missing targets are IGNORE_INDEX so every real token counts once.
    """
    tokens: list[int] = []
    for ids in token_stream(paths, tokenizer, text_field):
        tokens.extend(ids)
        if len(tokens) >= max_tokens + 1:
            break
    tokens = tokens[: max_tokens + 1]
    if len(tokens) < 2:
        raise ChatforgeError(f"{paths}: the validation corpus has no text")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    inputs, targets = [], []
    for start in range(0, len(tokens) - 1, seq_len):
        block = tokens[start: start + seq_len + 1]
        x, y = block[:-1], block[1:]
        short = seq_len - len(x)
        inputs.append(x + [pad] * short)
        targets.append(y + [IGNORE_INDEX] * short)
    batches = []
    for i in range(0, len(inputs), batch_size):
        batches.append((torch.tensor(inputs[i:i + batch_size]), torch.tensor(targets[i:i + batch_size])))
    return batches
