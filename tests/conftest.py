"""Shared fixtures: small corpora and a tokenizer trained on them (no hub downloads)."""

import json
import random

import pytest

WORDS = ("the cat sat on a mat and ran to the big red house where a dog lived with two birds "
         "Borin lives in Trask and works as a baker").split()


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


def random_documents(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + "." for _ in range(n)]


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory):
    """A train/val JSONL corpus of random sentences over a 30-word vocabulary."""
    root = tmp_path_factory.mktemp("corpus")
    train = write_jsonl(root / "train.jsonl", [{"text": t} for t in random_documents(1500, seed=0)])
    val = write_jsonl(root / "val.jsonl", [{"text": t} for t in random_documents(100, seed=1)])
    return train, val


@pytest.fixture(scope="session")
def toy_tokenizer_dir(toy_corpus, tmp_path_factory):
    """A BPE tokenizer folder trained by the tokenizer stage on the toy corpus."""
    from chatforge.stages import tokenizer as stage

    out = tmp_path_factory.mktemp("tokenizer")
    stage.run(stage.Config(corpus=[str(toy_corpus[0])], out_dir=str(out), vocab_size=300))
    return out
