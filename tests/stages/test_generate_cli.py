"""`chatforge generate` on a tiny saved model folder: completions printed, clear one-line errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from chatforge.cli import main
from chatforge.data.jsonl import read_jsonl

CHAT_TEMPLATE = (
    "{%- for message in messages -%}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random 2-layer Llama (64 positions) with a tiny BPE tokenizer and a chat template, saved to disk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|pad|>", "<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["the cat sat on the mat", "a dog ran in the park", "hello world"] * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                        extra_special_tokens=specials[2:])
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    path = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_prints_a_completion_and_writes_jsonl(model_dir, tmp_path, capsys):
    out = tmp_path / "completions.jsonl"
    code = main(["generate", "--model", str(model_dir), "--prompt", "the cat", "max_new_tokens=6", f"out={out}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "=== prompt 1 ===\nthe cat\n--- completion (" in captured.out
    records = read_jsonl(out)
    assert len(records) == 1 and records[0]["prompt"] == "the cat"
    assert 1 <= records[0]["num_tokens"] <= 6 and isinstance(records[0]["completion"], str)
    assert records[0]["completion"] in captured.out


def test_chat_mode_and_prompts_file_with_sampling(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello"}\n\n{"prompt": "a dog"}\n')
    code = main(["generate", "--model", str(model_dir), "--prompts_file", str(prompts), "--chat", "true",
                 "do_sample=true", "top_p=0.9", "temperature=0.8", "max_new_tokens=4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "=== prompt 2 ===\na dog\n" in captured.out


def test_beam_search_from_the_cli(model_dir, capsys):
    code = main(["generate", "--model", str(model_dir), "--prompt", "a dog", "num_beams=3", "max_new_tokens=4"])
    assert code == 0, capsys.readouterr().err


def error_line(capsys) -> str:
    """The one `error: ...` line on stderr (transformers' own weight-loading progress bar may sit above it)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_folder_that_is_not_a_model_is_a_one_line_error(tmp_path, capsys):
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    assert main(["generate", "--model", str(folder), "--prompt", "hi"]) == 2
    err = error_line(capsys)
    assert err.startswith("error: ") and "not a model folder" in err and str(folder) in err


def test_missing_prompts_file_and_bad_line(model_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(model_dir), "--prompts_file", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in error_line(capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt field"}\n')
    assert main(["generate", "--model", str(model_dir), "--prompts_file", str(bad)]) == 2
    assert f"{bad}:2: field 'prompt'" in error_line(capsys)


def test_a_prompt_longer_than_the_context_is_a_one_line_error(model_dir, capsys):
    assert main(["generate", "--model", str(model_dir), "--prompt", "the cat sat on the mat " * 40]) == 2
    err = error_line(capsys)
    assert "context of 64 tokens" in err and "shorten the prompt" in err


def test_chat_without_a_template_and_no_prompt_are_errors(model_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(model_dir)]) == 2
    assert "no prompts" in error_line(capsys)
    assert main(["generate", "--model", str(model_dir), "--prompt", "hi", "num_beams=2", "do_sample=true"]) == 2
    assert "num_beams" in error_line(capsys)
