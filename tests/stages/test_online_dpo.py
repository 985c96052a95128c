import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from chatforge.cli import main
from chatforge.metrics import read_metrics
from chatforge.stages import dpo, online_dpo

ROUND_KEYS = {"samples/reward", "samples/reward_max", "samples/score", "samples/gold_score", "samples/kl",
              "samples/response_length", "samples/eos_rate", "samples/tokens_per_s", "pairs/prompts", "pairs/count",
              "train/loss", "train/accuracy", "train/margin", "train/chosen_logprobs", "train/rejected_logprobs",
              "train/steps", "time/sample_s", "time/score_s", "time/train_s", "time/round_s"}


def config(world_dir, base, out_dir, **overrides) -> online_dpo.Config:
    # the gold judge ranks the samples (an oracle run); see test_rejection_sampling.py for what the tiny base
    # model's noise can learn
    fields = dict(policy=str(base), prompts=str(world_dir / "prompts" / "rl.jsonl"), reward_source="gold",
                  gold_world=str(world_dir), out_dir=str(out_dir), rounds=5, prompts_per_round=40, k=8,
                  max_new_tokens=8, missing_eos_penalty=0.0, pairs="best_vs_worst", epochs=2, batch_prompts=8,
                  beta=0.1, learning_rate=1e-2, device="cpu", num_threads=1, tensorboard=False)
    cfg = online_dpo.Config(**{**fields, **overrides})
    cfg.validate()
    return cfg


@pytest.mark.parametrize("pairs, group, expected", [
    ("best_vs_worst", [1, 0], [(0, 1)]),
    ("best_vs_rest", [1, 3, 0], [(0, 1), (0, 2)]),  # sample 2 ties the best: no pair with it
    ("all", [1, 3, 0], [(0, 1), (0, 2), (1, 2)])])  # one sample per distinct score
def test_ranked_group_gives_the_pairs_without_ties(pairs, group, expected):
    scores = [0.2, 0.9, 0.9, 0.5]
    assert online_dpo.ranked_group(scores, pairs) == group
    chosen, rejected = dpo.pair_indices([len(group)], online_dpo.loss_settings(
        online_dpo.Config(pairs=pairs)).pairs, "cpu")
    assert list(zip(chosen.tolist(), rejected.tolist())) == expected
    assert online_dpo.ranked_group([0.3, 0.3, 0.3], pairs) == []  # every sample ties: no pair


def test_online_dpo_raises_the_gold_score(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    final = online_dpo.run(config(world_dir, base, tmp_path / "odpo"))
    metrics = read_metrics(tmp_path / "odpo")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert ROUND_KEYS <= set(metrics[0]), ROUND_KEYS - set(metrics[0])
    assert metrics[0]["samples/kl"] == pytest.approx(0.0, abs=1e-3)  # round 1 samples the reference itself
    assert metrics[-1]["samples/kl"] > 0.1
    gold = [m["samples/gold_score"] for m in metrics]  # all 40 prompts each round: the rounds compare
    assert gold[-1] > gold[0] + 0.05, gold  # seeds 0-3 on the tiny world: -0.49 -> -0.22, -0.50, -0.49, -0.49 -> -0.20
    AutoModelForCausalLM.from_pretrained(final)
    assert "- \"online-dpo\"" in (final / "README.md").read_text()
    summary = json.loads((tmp_path / "odpo" / "summary.json").read_text())
    assert summary["rounds"] == 5 and summary["first"]["samples/gold_score"] == gold[0]


REWARD_FN = "def shorter(prompts, responses):\n    return [-float(len(r)) for r in responses]\n"


def test_online_dpo_resume_gives_the_uninterrupted_weights(tiny_world_base, tmp_path):
    """A run cut off after round 1 resumes there (a reward function alone scoring this time, all pairs, IPO) and
    ends with the same weights."""
    world_dir, base = tiny_world_base
    (tmp_path / "fns.py").write_text(REWARD_FN)
    cfg = config(world_dir, base, tmp_path / "odpo", rounds=2, prompts_per_round=8, k=3, epochs=1, pairs="all",
                 loss_type="ipo", reward_source="fn", reward_fn=f"{tmp_path / 'fns.py'}:shorter")
    whole = load_file(online_dpo.run(cfg) / "model.safetensors")
    expected = read_metrics(tmp_path / "odpo")
    assert expected[0]["samples/reward"] == expected[0]["samples/reward_fn"] < 0  # the fn scored, not normalised
    assert expected[0]["pairs/count"] > expected[0]["pairs/prompts"]  # all pairs: up to 3 a prompt
    shutil.rmtree(tmp_path / "odpo" / "checkpoints" / "step_0000002")
    shutil.rmtree(tmp_path / "odpo" / "final")
    resumed = load_file(online_dpo.run(cfg) / "model.safetensors")
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)
    got = read_metrics(tmp_path / "odpo")
    for key in ("samples/reward", "samples/kl", "train/loss", "train/accuracy"):
        assert [m[key] for m in got] == pytest.approx([m[key] for m in expected], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("extra, words", [
    (["k=1"], "online_dpo: field 'k' must be >= 2 (a pair needs two samples), got 1"),
    (["policy="], "online_dpo: field 'policy' is empty"),
    (["prompts=nowhere.jsonl"], "nowhere.jsonl: field 'prompts': file does not exist"),
    (["reference=no/such/model"], "no/such/model"),
    (["beta=0"], "online_dpo: field 'beta' must be > 0"),
    (["loss_type=ipo", "label_smoothing=0.1"], "label_smoothing' applies to loss_type=sigmoid only"),
    (["gold_world=nowhere"], "nowhere: field 'gold_world': no world.json")])
def test_online_dpo_bad_inputs_are_one_line_errors(tiny_world_base, tmp_path, capsys, extra, words):
    world_dir, base = tiny_world_base
    out = tmp_path / "out"
    assert main(["online_dpo", f"policy={base}", f"prompts={world_dir / 'prompts' / 'rl.jsonl'}",
                 f"gold_world={world_dir}", "reward_source=gold", f"out_dir={out}", "device=cpu", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err
    assert not out.exists()  # checked before the run folder is made


def test_online_dpo_refuses_a_reward_model_with_another_tokenizer(tiny_world_base, random_reward_model_dir,
                                                                  toy_tokenizer_dir, tmp_path, capsys):
    world_dir, base = tiny_world_base
    other = tmp_path / "rm_other_tokenizer"
    shutil.copytree(random_reward_model_dir, other)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(toy_tokenizer_dir / name, other / name)
    out = tmp_path / "out"
    assert main(["online_dpo", f"policy={base}", f"prompts={world_dir / 'prompts' / 'rl.jsonl'}",
                 f"reward_model={other}", f"out_dir={out}", "device=cpu"]) == 2
    assert "tokenizer differs" in capsys.readouterr().err
    assert not out.exists()


def test_online_dpo_tiny_config_reads_the_demo_run():
    from chatforge.config import load_config

    cfg = load_config(online_dpo.Config, Path(__file__).parents[2] / "configs" / "online_dpo_tiny.yaml",
                      validate=False)
    assert cfg.policy == "runs/demo/sft/best" and cfg.reward_model == "runs/demo/rm/final"
    assert cfg.prompts == "runs/demo/world/prompts/rl.jsonl" and cfg.reference == ""
    assert cfg.rounds * cfg.prompts_per_round * cfg.k == 50 * 256  # ppo_tiny.yaml's samples: steps x rollout_batch
