import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from chatforge.cli import main
from chatforge.errors import ChatforgeError
from chatforge.metrics import read_metrics
from chatforge.models.io import load_tokenizer, save_hf_folder
from chatforge.models.reward import build_reward_model
from chatforge.stages import ppo

STEP_KEYS = {"rollout/reward", "rollout/gold_score", "rollout/kl", "rollout/kl_coef", "rollout/response_length",
             "rollout/eos_rate", "rollout/tokens", "rollout/tokens_per_s", "time/generate_s", "time/score_s",
             "time/train_s", "time/step_s", "train/entropy", "train/clip_fraction", "train/approx_kl",
             "train/value_loss", "train/value_clip_fraction", "train/policy_loss", "train/ptx_loss"}


@pytest.fixture(scope="module")
def reward_model_dir(tiny_world_base, tmp_path_factory):
    """A reward model on the tiny base model with a random head (rewards vary, so PPO has a signal)."""
    _, base = tiny_world_base
    tokenizer = load_tokenizer(base)
    torch.manual_seed(0)
    model = build_reward_model(base, tokenizer.pad_token_id)
    torch.nn.init.normal_(model.score.weight, std=0.3)
    return save_hf_folder(model, tokenizer, tmp_path_factory.mktemp("ppo_rm") / "rm")


def ppo_config(world_dir, base, rm_dir, out_dir, **overrides) -> ppo.Config:
    fields = dict(policy=str(base), reward_model=str(rm_dir), prompts=str(world_dir / "prompts" / "rl.jsonl"),
                  pretrain_data=[str(world_dir / "corpus" / "train.jsonl")], out_dir=str(out_dir), steps=4,
                  rollout_batch=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=12, learning_rate=1e-3,
                  critic_learning_rate=1e-3, ptx_coef=0.5, ptx_batch_size=2, ptx_seq_len=64,
                  gold_world=str(world_dir), tensorboard=False, device="cpu", num_threads=1)
    fields.update(overrides)
    cfg = ppo.Config(**fields)
    cfg.validate()
    return cfg


def test_ppo_logs_every_number_and_saves_loadable_models(tiny_world_base, reward_model_dir, tmp_path):
    world_dir, base = tiny_world_base
    final = ppo.run(ppo_config(world_dir, base, reward_model_dir, tmp_path / "ppo", save_every=2))
    metrics = read_metrics(tmp_path / "ppo")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert STEP_KEYS <= set(metrics[-1]), STEP_KEYS - set(metrics[-1])
    assert metrics[0]["rollout/kl"] == pytest.approx(0.0, abs=1e-4)  # the actor starts as the reference
    assert metrics[-1]["rollout/kl"] != 0.0
    AutoModelForCausalLM.from_pretrained(final)
    checkpoint = tmp_path / "ppo" / "checkpoints" / "step_0000004"
    assert (checkpoint / "critic" / "config.json").exists() and (checkpoint / "trainer_state.pt").exists()
    tokenizer = load_tokenizer(final)
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")]
    for folder in (final, checkpoint):  # plain transformers stops at the end of a turn, resumed or final
        assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == stops
    card = (final / "README.md").read_text()
    assert "- \"ppo-ptx\"" in card and f"base_model: \"{base}\"" in card and "| rollout/kl |" in card
    summary = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["reward_std_sft"] > 0


def test_ppo_resume_gives_the_same_run(tiny_world_base, reward_model_dir, tmp_path):
    """Stopping after step 2 and resuming gives the same steps 3-4 and weights as one uninterrupted run."""
    world_dir, base = tiny_world_base
    assert_resume_matches(lambda out, **fields: ppo.run(ppo_config(world_dir, base, reward_model_dir, out, **fields)),
                          tmp_path, ("rollout/reward", "train/policy_loss", "train/value_loss", "train/ptx_loss"))


def assert_resume_matches(run, tmp_path, keys):
    """run(out_dir, **fields) for 4 steps in one go, and for 2 then again to 4 in another folder: the same
    metrics `keys` at every step and the same final weights."""
    whole = run(tmp_path / "whole")
    run(tmp_path / "cut", steps=2)
    resumed = run(tmp_path / "cut")
    for key in keys:
        expected = [m[key] for m in read_metrics(tmp_path / "whole")]
        got = [m[key] for m in read_metrics(tmp_path / "cut")]
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), key
    weights, resumed_weights = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name, tensor in weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=1e-5, atol=1e-6)


def test_ppo_raises_the_reward(tiny_world_base, reward_model_dir, tmp_path):
    world_dir, base = tiny_world_base
    ppo.run(ppo_config(world_dir, base, reward_model_dir, tmp_path / "ppo", steps=12, rollout_batch=16,
                       ppo_epochs=4, ptx_coef=0.0, kl_coef=0.01, save_every=0))
    rewards = [m["rollout/reward"] for m in read_metrics(tmp_path / "ppo")]
    # halves, not the first and last 3 steps: one 16-sample batch's mean reward swings by ~0.5
    first, last = rewards[:6], rewards[6:]
    assert sum(last) / 6 > sum(first) / 6 + 0.1, rewards


def run_cli(world_dir, base, rm_dir, out_dir, *extra) -> int:
    return main(["ppo", f"policy={base}", f"reward_model={rm_dir}", f"prompts={world_dir / 'prompts' / 'rl.jsonl'}",
                 f"out_dir={out_dir}", "steps=1", "rollout_batch=4", "minibatch_size=4", "device=cpu", *extra])


def test_ppo_refuses_a_reward_model_with_another_tokenizer(tiny_world_base, reward_model_dir, toy_tokenizer_dir,
                                                           tmp_path, capsys):
    world_dir, base = tiny_world_base
    other = tmp_path / "rm_other_tokenizer"
    shutil.copytree(reward_model_dir, other)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(toy_tokenizer_dir / name, other / name)
    assert run_cli(world_dir, base, other, tmp_path / "out") == 2
    assert "tokenizer differs" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()  # stopped before any training


def test_ppo_refuses_a_model_that_is_not_a_reward_model(tiny_world_base, tmp_path, capsys):
    world_dir, base = tiny_world_base
    assert run_cli(world_dir, base, base, tmp_path / "out") == 2
    assert "not a reward model" in capsys.readouterr().err


def test_ppo_refuses_prompts_longer_than_the_context(tiny_world_base, reward_model_dir, tmp_path, capsys):
    world_dir, base = tiny_world_base
    prompts = tmp_path / "long.jsonl"
    prompts.write_text(json.dumps({"prompt": "Who is Borin? " * 200}) + "\n")
    code = main(["ppo", f"policy={base}", f"reward_model={reward_model_dir}", f"prompts={prompts}",
                 f"out_dir={tmp_path / 'out'}", "device=cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{prompts}:1" in err and "context" in err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_ppo_with_the_gold_judge_as_reward(tiny_world_base, reward_model_dir, tmp_path):
    """reward_source gold: each response's raw score is its gold score (the oracle run's reward)."""
    world_dir, base = tiny_world_base
    ppo.run(ppo_config(world_dir, base, reward_model_dir, tmp_path / "ppo", steps=2, ptx_coef=0.0,
                       reward_source="gold", save_every=0))
    metrics = read_metrics(tmp_path / "ppo")
    for record in metrics:
        assert record["rollout/reward"] == pytest.approx(record["rollout/gold_score"], abs=1e-6)
    summary = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert summary["reward_std_sft"] > 0  # normalised by the gold scores of the reference's samples


def test_ppo_gold_reward_needs_a_world(tiny_world_base, reward_model_dir, tmp_path, capsys):
    world_dir, base = tiny_world_base
    assert run_cli(world_dir, base, reward_model_dir, tmp_path / "out", "reward_source=gold") == 2
    assert "gold_world" in capsys.readouterr().err


REWARD_FNS = '''
def index(prompts, responses):
    return [float(i) for i in range(len(responses))]

def one_score(prompts, responses):
    return [1.0]

def fails(prompts, responses):
    raise ValueError("no rule for this prompt")

def words(prompts, responses):
    return ["good"] * len(responses)

not_a_function = 3
'''


@pytest.fixture
def reward_fns(tmp_path):
    path = tmp_path / "reward_fns.py"
    path.write_text(REWARD_FNS)
    return path


def test_ppo_with_a_reward_function_alone_and_beside_the_rm(tiny_world_base, reward_model_dir, reward_fns, tmp_path):
    """reward_source fn (no reward model, the critic from `critic`): the fn's scores are the step's rewards,
    times the weight; beside the RM they are added after the RM's normalisation."""
    world_dir, base = tiny_world_base
    ppo.run(ppo_config(world_dir, base, "", tmp_path / "fn", steps=1, ptx_coef=0.0, critic=str(reward_model_dir),
                       reward_source="fn", reward_fn=f"{reward_fns}:index", reward_fn_weight=2.0,
                       missing_eos_penalty=0.0, save_every=0))
    (record,) = read_metrics(tmp_path / "fn")
    assert record["rollout/reward"] == record["rollout/reward_fn"] == 3.5  # mean of 0..7
    assert record["rollout/score"] == 7.0
    ppo.run(ppo_config(world_dir, base, reward_model_dir, tmp_path / "rm", steps=1, ptx_coef=0.0,
                       reward_fn=f"{reward_fns}:index", reward_fn_weight=0.5, save_every=0))
    (record,) = read_metrics(tmp_path / "rm")
    summary = json.loads((tmp_path / "rm" / "summary.json").read_text())
    normalised = (record["rollout/reward"] - summary["reward_mean_sft"]) / summary["reward_std_sft"]
    assert record["rollout/reward_fn"] == 3.5
    assert record["rollout/score"] == pytest.approx(normalised + 0.5 * 3.5 - (1.0 - record["rollout/eos_rate"]),
                                                    abs=1e-5)


@pytest.mark.parametrize("function, words", [
    ("no_such_module_xyz:f", "field 'reward_fn': cannot import no_such_module_xyz: ModuleNotFoundError"),
    ("FILE:not_a_function", "not_a_function is not callable (int)"),
    ("FILE:missing", "has no 'missing'"),
    ("FILE:fails", "raised ValueError: no rule for this prompt"),
    ("FILE:one_score", "returned 1 scores for 2 responses"),
    ("FILE:words", "returned 'good' (str) at position 0")])
def test_ppo_stops_on_a_broken_reward_function_before_writing(tiny_world_base, reward_model_dir, reward_fns,
                                                              tmp_path, capsys, function, words):
    world_dir, base = tiny_world_base
    out = tmp_path / "out"
    assert run_cli(world_dir, base, reward_model_dir, out, f"reward_fn={function.replace('FILE', str(reward_fns))}") == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err
    assert not out.exists()  # the pre-flight call comes before the run folder


def test_ppo_reward_source_fn_needs_a_reward_fn(tiny_world_base, reward_model_dir, tmp_path, capsys):
    world_dir, base = tiny_world_base
    assert run_cli(world_dir, base, reward_model_dir, tmp_path / "out", "reward_source=fn") == 2
    assert "needs field 'reward_fn'" in capsys.readouterr().err


def test_ppo_stops_when_the_reward_function_breaks_mid_run(tiny_world_base, reward_model_dir, tmp_path):
    """Every call is checked, not just the pre-flight one (two responses, where this function still works)."""
    world_dir, base = tiny_world_base
    path = tmp_path / "two.py"
    path.write_text("def two(prompts, responses):\n    return [1.0] * min(len(responses), 2)\n")
    with pytest.raises(ChatforgeError, match=r"returned 2 scores for 8 responses"):
        ppo.run(ppo_config(world_dir, base, reward_model_dir, tmp_path / "out", steps=1, ptx_coef=0.0,
                           reward_fn=f"{path}:two", save_every=0))
    assert read_metrics(tmp_path / "out") == []  # no step was logged


def test_ppo_takes_a_temperature_below_one_and_refuses_zero(tiny_world_base, reward_model_dir, tmp_path, capsys):
    world_dir, base = tiny_world_base
    ppo_config(world_dir, base, reward_model_dir, tmp_path / "ok", temperature=0.7).validate()
    assert run_cli(world_dir, base, reward_model_dir, tmp_path / "out", "temperature=0") == 2
    assert "field 'temperature' must be > 0, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_length_groups_and_response_only_logits_leave_the_metrics_unchanged(tiny_world_base, reward_model_dir,
                                                                           tmp_path, monkeypatch, algorithm):
    """Scoring and training by length groups (here of 3 rows) with the LM head at response positions only gives
    the numbers of plain whole-batch passes that form every position's logits."""
    from chatforge.models import scoring

    world_dir, base = tiny_world_base
    overrides = dict(steps=2, ptx_coef=0.0, algorithm=algorithm, save_every=0)
    monkeypatch.setattr(ppo, "by_length", lambda forward, ids, mask, width, *rows: scoring.by_length(
        forward, ids, mask, width, 3))
    ppo.run(ppo_config(world_dir, base, reward_model_dir, tmp_path / "fast", **overrides))
    monkeypatch.setattr(ppo, "by_length", lambda forward, ids, mask, width, *rows: forward(ids, mask, width))
    monkeypatch.setattr(scoring, "takes_logits_to_keep", lambda model_class: False)
    ppo.run(ppo_config(world_dir, base, reward_model_dir, tmp_path / "plain", **overrides))
    fast, plain = read_metrics(tmp_path / "fast"), read_metrics(tmp_path / "plain")
    for fast_step, plain_step in zip(fast, plain, strict=True):
        for key, value in plain_step.items():
            if key.startswith(("rollout/", "train/")) and key != "rollout/tokens_per_s":
                assert fast_step[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
