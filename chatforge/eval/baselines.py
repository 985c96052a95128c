"""Reference points a trained model must beat: the corpus's unigram model."""

from __future__ import annotations

import math

import numpy as np

from chatforge.data.packing import token_stream


def unigram_loss(tokenizer, train_paths, val_paths, max_val_tokens: int = 65536, text_field: str = "text") -> float:
    """Held-out cross-entropy (nats/token) of the add-one-smoothed unigram model of the train corpus.

    Scored on the same first `max_val_tokens` + 1 held-out tokens minus the first, i.e. the targets
    the pretraining stage's validation loss is computed on.
    """
    vocab = len(tokenizer)
    counts = np.ones(vocab, dtype=np.float64)  # add-one smoothing: no held-out token has probability 0
    for ids in token_stream(train_paths, tokenizer, text_field):
        np.add.at(counts, ids, 1)
    log_probs = np.log(counts / counts.sum())
    targets: list[int] = []
    for ids in token_stream(val_paths, tokenizer, text_field):
        targets.extend(ids)
        if len(targets) >= max_val_tokens + 1:
            break
    targets = targets[1: max_val_tokens + 1]
    return float(-log_probs[targets].mean()) if targets else math.nan
