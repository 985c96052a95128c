"""Shared fixtures: small corpora and a tokenizer trained on them (no hub downloads)."""

import contextlib
import random

import pytest

from chatforge.data.jsonl import write_jsonl
from small_world import SMALL, SMALL_DEMO, THREADS

WORDS = ("the cat sat on a mat and ran to the big red house where a dog lived with two birds "
         "Borin lives in Trask and works as a baker").split()


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


@pytest.fixture(scope="session")
def tiny_world_base(tmp_path_factory):
    """A small built-in world, its tokenizer and a 2-layer base model pretrained for a few steps.

    Returns (world_dir, base_model_dir). Shared by the SFT / RM tests; the model is untrained-ish,
    so tests check mechanics (files, metrics, selection), not quality.
    """
    from chatforge.stages import pretrain, tokenizer
    from chatforge.stages import world as world_stage

    root = tmp_path_factory.mktemp("tiny_world")
    world_dir = world_stage.run(world_stage.Config(
        out_dir=root / "world", n_people=8, n_towns=4, train_docs=400, val_docs=40, train_demos=120,
        val_demos=20, rl_prompts=40, eval_prompts=20, calibration_prompts=30))
    train, val = str(world_dir / "corpus" / "train.jsonl"), str(world_dir / "corpus" / "val.jsonl")
    tokenizer.run(tokenizer.Config(corpus=[train], out_dir=str(root / "tok"), vocab_size=512))
    base = pretrain.run(pretrain.Config(
        corpus=[train], val_corpus=[val], tokenizer=str(root / "tok"), out_dir=str(root / "base"),
        model_overrides={"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                         "num_attention_heads": 4},
        seq_len=128, batch_size=8, max_steps=20, warmup_steps=2, eval_every=0, save_every=0, tensorboard=False))
    return world_dir, base


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory):
    """A random 2-layer Llama (96 positions) saved with chatforge's BPE tokenizer and chat template.

    Untrained: tests of chat / serving check mechanics (streaming, history, the API), not replies.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from chatforge.models.io import save_hf_folder
    from chatforge.stages.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(random_documents(200, seed=2) + ["héllo wörld, 日本語 ok"] * 5, vocab_size=400)
    torch.manual_seed(0)
    # untied embeddings: a random tied model mostly repeats its last input token
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    return save_hf_folder(model, tokenizer, tmp_path_factory.mktemp("chat_model") / "model")


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """The demo on the shrunken world, with the weak-KL and oracle runs: (run folder, exit code, stdout)."""
    run_dir = tmp_path_factory.mktemp("small") / "demo"
    argv = [f"{stage}.{item}" for stage, items in SMALL.items() for item in items]
    argv += SMALL_DEMO + ["weak_kl_coef=0.05", "weak_kl_steps=3", "oracle_run=true", f"num_threads={THREADS}"]
    from chatforge.cli import main

    capture = tmp_path_factory.mktemp("small_log") / "stdout.txt"
    with capture.open("w") as out, contextlib.redirect_stdout(out):
        code = main(["demo", "--config", "configs/demo.yaml", f"run_dir={run_dir}", *argv])
    return run_dir, code, capture.read_text()
