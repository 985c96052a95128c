"""Bad inputs, fuzz style: every case ends with a clear message naming the file (and line / field where there
is one), a non-zero exit and no traceback, and leaves an earlier run's files in out_dir byte for byte."""

import json
import shutil

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from chatforge.cli import main
from chatforge.models.io import load_tokenizer, save_hf_folder
from chatforge.models.reward import build_reward_model

HUGE = 8_000_000  # characters on one line


def earlier_run(out_dir):
    """An out_dir holding an earlier run's outputs (no checkpoints, so nothing resumes from it)."""
    (out_dir / "final").mkdir(parents=True)
    (out_dir / "config.yaml").write_text("learning_rate: 0.001\n")
    (out_dir / "metrics.jsonl").write_text('{"step": 1, "train/loss": 3.5}\n{"step": 2, "train/loss": 3.1}\n')
    (out_dir / "summary.json").write_text('{"step": 2}\n')
    (out_dir / "final" / "config.json").write_text('{"model_type": "llama"}\n')
    return snapshot(out_dir)


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def jsonl(*records):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


# name -> (file contents, what the error must say besides the file name)
CORPUS_CASES = {
    "malformed_json": (jsonl({"text": "a cat"}, {"text": "a dog"}, '{"text": "no end'), ":3: invalid JSON"),
    "empty_file": ("", "shorter than one block"),
    "only_blank_lines": ("\n\n   \n", "shorter than one block"),
    "wrong_type": (jsonl({"text": "a cat"}, {"text": 5}), ":2: field 'text' should be a string"),
    "not_an_object": (jsonl({"text": "a cat"}, ["text"]), ":2: field 'text' is missing"),
    "missing_field": (jsonl({"body": "a cat"}), ":1: field 'text' is missing"),
    "non_utf8": (b'{"text": "a cat"}\n{"text": "caf\xe9 \xff"}\n', ":2: not valid UTF-8"),
    "huge_unterminated_line": ('{"text": "' + "x" * HUGE, ":1: invalid JSON"),
    "huge_line_wrong_type": (jsonl({"text": ["word"] * (HUGE // 8)}), ":1: field 'text' should be a string"),
}

DEMO_CASES = {
    "malformed_json": (jsonl({"prompt": "hi", "response": "ok"}, "{prompt: hi}"), ":2: invalid JSON"),
    "empty_file": ("", "no"),
    "wrong_type": (jsonl({"prompt": "hi", "response": 5}), ":1: field 'response'"),
    "unknown_role": (jsonl({"messages": [{"role": "bot", "content": "x"}]}), ":1: field 'messages[0].role'"),
    "non_utf8": (b'{"prompt": "hi", "response": "\xc3\x28"}\n', ":1: not valid UTF-8"),
    "huge_line_wrong_type": (jsonl({"prompt": "q" * HUGE, "response": {"text": "a"}}), ":1: field 'response'"),
}

COMPARISON_CASES = {
    "one_response": (jsonl({"prompt": "hi", "responses": ["only one"]}), ":1: field 'responses'"),
    "wrong_type": (jsonl({"prompt": "hi", "chosen": "a", "rejected": 3}), ":1: field 'rejected'"),
    "malformed_json": (jsonl({"prompt": "hi", "chosen": "a", "rejected": "b"}, "[1, 2"), ":2: invalid JSON"),
}


def check_clean_failure(argv, out_dir, before, capsys, *must_say):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, err
    assert err.startswith("error: ") and "Traceback" not in err, err[:2000]
    assert len(err) < 2000, f"the message repeats the input: {len(err)} characters"
    for text in must_say:
        assert text in err, (text, err)
    assert snapshot(out_dir) == before, "the earlier run's files changed"


@pytest.mark.parametrize("case", sorted(CORPUS_CASES))
def test_pretrain_bad_corpus(case, toy_tokenizer_dir, tmp_path, capsys):
    data, says = CORPUS_CASES[case]
    corpus = write(tmp_path / f"{case}.jsonl", data)
    out_dir = tmp_path / "out"
    before = earlier_run(out_dir)
    argv = ["pretrain", f"corpus=[{corpus}]", f"tokenizer={toy_tokenizer_dir}", f"out_dir={out_dir}",
            "model_overrides={num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2}",
            "seq_len=16", "batch_size=2", "max_steps=2", "tensorboard=false", "device=cpu", "num_threads=1"]
    check_clean_failure(argv, out_dir, before, capsys, str(corpus), says)


@pytest.mark.parametrize("case", ["malformed_json", "wrong_type", "non_utf8", "huge_unterminated_line", "empty_file"])
def test_tokenizer_bad_corpus(case, tmp_path, capsys):
    data, says = CORPUS_CASES[case]
    corpus = write(tmp_path / f"{case}.jsonl", data)
    out_dir = tmp_path / "out"
    before = earlier_run(out_dir)
    check_clean_failure(["tokenizer", f"corpus=[{corpus}]", f"out_dir={out_dir}", "vocab_size=300"], out_dir, before,
                        capsys, str(corpus), says if case != "empty_file" else "holds no documents")


def test_pretrain_bad_validation_corpus(toy_corpus, toy_tokenizer_dir, tmp_path, capsys):
    val = write(tmp_path / "val.jsonl", jsonl({"text": "a cat"}, {"text": None}))
    out_dir = tmp_path / "out"
    before = earlier_run(out_dir)
    argv = ["pretrain", f"corpus=[{toy_corpus[0]}]", f"val_corpus=[{val}]", f"tokenizer={toy_tokenizer_dir}",
            f"out_dir={out_dir}", "seq_len=16", "batch_size=2", "max_steps=2", "tensorboard=false", "device=cpu",
            "model_overrides={num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2}"]
    check_clean_failure(argv, out_dir, before, capsys, f"{val}:2: field 'text' should be a string")


TRAINING_DATA_CASES = [("sft", case, *DEMO_CASES[case]) for case in sorted(DEMO_CASES)] + \
    [("rm", case, *COMPARISON_CASES[case]) for case in sorted(COMPARISON_CASES)]


@pytest.mark.parametrize("stage, case, data, says", TRAINING_DATA_CASES,
                         ids=[f"{stage}-{case}" for stage, case, *_ in TRAINING_DATA_CASES])
def test_sft_and_rm_bad_training_data(stage, case, data, says, tiny_world_base, tmp_path, capsys):
    _, base = tiny_world_base
    train_data = write(tmp_path / f"{case}.jsonl", data)
    out_dir = tmp_path / "out"
    before = earlier_run(out_dir)
    argv = [stage, f"model={base}", f"train_data=[{train_data}]", f"out_dir={out_dir}", "epochs=1",
            "tensorboard=false", "device=cpu", "num_threads=1"]
    check_clean_failure(argv, out_dir, before, capsys, str(train_data), says)


@pytest.fixture(scope="module")
def reward_model_dir(tiny_world_base, tmp_path_factory):
    _, base = tiny_world_base
    tokenizer = load_tokenizer(base)
    return save_hf_folder(build_reward_model(base, tokenizer.pad_token_id), tokenizer,
                          tmp_path_factory.mktemp("bad_inputs_rm") / "rm")


def test_ppo_bad_prompts(tiny_world_base, reward_model_dir, tmp_path, capsys):
    world_dir, base = tiny_world_base
    prompts = write(tmp_path / "prompts.jsonl", jsonl({"prompt": "hi"}, {"question": "no prompt field"}))
    out_dir = tmp_path / "out"
    before = earlier_run(out_dir)
    argv = ["ppo", f"policy={base}", f"reward_model={reward_model_dir}", f"prompts={prompts}", f"out_dir={out_dir}",
            "device=cpu"]
    check_clean_failure(argv, out_dir, before, capsys, f"{prompts}:2: field 'prompt'")


CONFIG_CASES = {
    "unknown_key": ("seq_len: 16\nlearning_rat: 0.1\n", ":2: unknown field 'learning_rat'", "did you mean 'learning_rate'"),
    "mistyped_value": ("seq_len: 16\nbatch_size: eight\n", ":2: field 'batch_size': expected an integer"),
    "list_for_a_number": ("max_steps: [1, 2]\n", ":1: field 'max_steps': expected an integer"),
    "invalid_yaml": ("seq_len: 16\n  batch_size: [\n", "invalid YAML"),
    "not_a_mapping": ("- seq_len\n- 16\n", "expected a mapping"),
    "non_utf8": (b"seq_len: 16\nout_dir: caf\xe9\n", "UTF-8"),
    "bad_choice": ("model_preset: enormous\n", "field 'model_preset'"),
    "negative_steps": ("max_steps: -3\n", "field 'max_steps' must be >= 1"),
    "a_folder": (None, "is a folder"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_file(case, toy_corpus, toy_tokenizer_dir, tmp_path, capsys):
    text, *says = CONFIG_CASES[case]
    config = write(tmp_path / "pretrain.yaml", text) if text is not None else tmp_path
    out_dir = tmp_path / "out"
    before = earlier_run(out_dir)
    argv = ["pretrain", "--config", str(config), f"corpus=[{toy_corpus[0]}]", f"tokenizer={toy_tokenizer_dir}",
            f"out_dir={out_dir}", "device=cpu"]
    must = [str(config), *says] if case not in ("bad_choice", "negative_steps") else says
    check_clean_failure(argv, out_dir, before, capsys, *must)


def test_unknown_and_mistyped_command_line_keys(toy_corpus, toy_tokenizer_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    before = earlier_run(out_dir)
    base = ["pretrain", f"corpus=[{toy_corpus[0]}]", f"tokenizer={toy_tokenizer_dir}", f"out_dir={out_dir}"]
    check_clean_failure(base + ["max_step=5"], out_dir, before, capsys, "unknown field 'max_step'", "max_steps")
    check_clean_failure(base + ["grad_clip=strong"], out_dir, before, capsys, "field 'grad_clip': expected a number")
    check_clean_failure(base + ["--config"], out_dir, before, capsys, "--config needs a file")


@pytest.fixture(scope="module")
def model_with_a_larger_tokenizer(tiny_world_base, tmp_path_factory):
    """A model folder whose embeddings (64 rows) are fewer than its tokenizer's tokens (the tiny world's 512)."""
    _, base = tiny_world_base
    folder = tmp_path_factory.mktemp("mismatch") / "model"
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (base / name).exists():
            shutil.copy(base / name, folder / name)
    return folder


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo", "pretrain"])
def test_a_tokenizer_that_does_not_match_the_model(stage, model_with_a_larger_tokenizer, reward_model_dir,
                                                   tiny_world_base, tmp_path, capsys):
    world_dir, base = tiny_world_base
    model = model_with_a_larger_tokenizer
    out_dir = tmp_path / "out"
    before = earlier_run(out_dir)
    argv = {"sft": ["sft", f"model={model}", f"train_data=[{world_dir / 'demos' / 'train.jsonl'}]"],
            "rm": ["rm", f"model={model}", f"train_data=[{world_dir / 'demos' / 'train.jsonl'}]"],
            "ppo": ["ppo", f"policy={model}", f"reward_model={reward_model_dir}",
                    f"prompts={world_dir / 'prompts' / 'rl.jsonl'}"],
            "pretrain": ["pretrain", f"init_from={model}", f"tokenizer={base}",
                         f"corpus=[{world_dir / 'corpus' / 'train.jsonl'}]"]}[stage]
    check_clean_failure(argv + [f"out_dir={out_dir}", "device=cpu"], out_dir, before, capsys, str(model),
                        "the tokenizer has", "embeddings only 64")
