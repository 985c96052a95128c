import json

import pytest
import yaml

from chatforge.errors import ChatforgeError
from chatforge.stages import iterate

RM = {"epochs": 1, "batch_prompts": 4, "learning_rate": 1e-3, "device": "cpu", "num_threads": 1,
      "tensorboard": False}
PPO = {"steps": 2, "rollout_batch": 8, "minibatch_size": 4, "ppo_epochs": 1, "max_new_tokens": 12,
       "ptx_coef": 0.0, "save_every": 0, "device": "cpu", "num_threads": 1, "tensorboard": False}
EVAL = {"max_prompts": 6, "samples_per_prompt": 1, "max_new_tokens": 12, "ppl_corpus": [], "device": "cpu",
        "num_threads": 1}


def iterate_config(world_dir, base, out_dir, **overrides) -> iterate.Config:
    fields = dict(policy=str(base), prompts=str(world_dir / "prompts" / "rl.jsonl"),
                  eval_prompts=str(world_dir / "prompts" / "eval.jsonl"), world=str(world_dir), rounds=2,
                  comparison_prompts=12, comparison_k=3, labelers=3, rm=RM, ppo=PPO, eval=EVAL,
                  out_dir=str(out_dir), num_threads=1)
    fields.update(overrides)
    cfg = iterate.Config(**fields)
    cfg.validate()
    return cfg


def line_count(path) -> int:
    return sum(1 for line in open(path) if line.strip())


def test_two_rounds_chain_policy_rm_and_reference(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    final = iterate.run(iterate_config(world_dir, base, tmp_path / "it"))
    rounds = json.loads((tmp_path / "it" / "iterate.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert final == tmp_path / "it" / "round_2" / "ppo" / "final"
    for key in ("comparisons", "rm_val_accuracy", "gold_score", "winrate_vs_reference", "kl_to_reference"):
        assert all(r[key] is not None for r in rounds), key
    # round 2 samples round 1's policy, starts PPO from it, and keeps the first policy as the KL reference
    second_ppo = yaml.safe_load((tmp_path / "it" / "round_2" / "ppo" / "config.yaml").read_text())
    assert second_ppo["policy"] == str(tmp_path / "it" / "round_1" / "ppo" / "final")
    assert second_ppo["reference"] == str(base)
    assert rounds[1]["start_policy"] == second_ppo["policy"]
    # round 2's RM trains on both rounds' comparisons and starts from the reference
    second_rm = yaml.safe_load((tmp_path / "it" / "round_2" / "rm" / "config.yaml").read_text())
    assert second_rm["model"] == str(base)
    assert second_rm["train_data"] == [str(tmp_path / "it" / f"round_{n}" / "comparisons" / "train.jsonl")
                                       for n in (1, 2)]
    assert line_count(tmp_path / "it" / "round_2" / "comparisons" / "train.jsonl") > 0


def test_a_finished_round_is_not_redone(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    iterate.run(iterate_config(world_dir, base, tmp_path / "it", rounds=1))
    comparisons = tmp_path / "it" / "round_1" / "comparisons" / "train.jsonl"
    stamp = comparisons.stat().st_mtime_ns
    iterate.run(iterate_config(world_dir, base, tmp_path / "it", rounds=2))
    assert comparisons.stat().st_mtime_ns == stamp
    assert len(json.loads((tmp_path / "it" / "iterate.json").read_text())["rounds"]) == 2


def test_bad_fields_fail_before_anything_loads(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    with pytest.raises(ChatforgeError, match="comparison_k"):
        iterate_config(world_dir, base, tmp_path / "it", comparison_k=12)
    with pytest.raises(ChatforgeError, match="world.json"):
        iterate_config(world_dir, base, tmp_path / "it", world=str(tmp_path))
