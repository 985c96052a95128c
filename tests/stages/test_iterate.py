import json
import math
import threading

import pytest
import yaml

from chatforge.data.jsonl import read_jsonl, write_jsonl
from chatforge.errors import ChatforgeError
from chatforge.stages import iterate

RM = {"epochs": 1, "batch_prompts": 4, "learning_rate": 1e-3, "device": "cpu", "num_threads": 1,
      "tensorboard": False}
PPO = {"steps": 2, "rollout_batch": 8, "minibatch_size": 4, "ppo_epochs": 1, "max_new_tokens": 12,
       "ptx_coef": 0.0, "save_every": 0, "device": "cpu", "num_threads": 1, "tensorboard": False}
EVAL = {"max_prompts": 6, "samples_per_prompt": 2, "max_new_tokens": 12, "ppl_corpus": [], "device": "cpu",
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


def test_two_rounds_chain_policy_rm_reference_and_control(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    run_dir = tmp_path / "it"
    final = iterate.run(iterate_config(world_dir, base, run_dir, control=True))
    rows = json.loads((run_dir / "iterate.json").read_text())["rounds"]
    # row 0 is the start policy, evaluated like every round
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["policy"] == str(base)
    assert final == run_dir / "round_2" / "ppo" / "final"
    for key in ("comparisons", "rm_val_accuracy", "gold_score", "gold_se", "gold_gain", "winrate_vs_reference",
                "kl_to_reference", "labeler_agreement"):
        assert all(r[key] is not None for r in rows[1:]), key
    # round 2 samples round 1's policy, starts PPO from it, and keeps the first policy as the KL reference
    second_ppo = yaml.safe_load((run_dir / "round_2" / "ppo" / "config.yaml").read_text())
    assert second_ppo["policy"] == str(run_dir / "round_1" / "ppo" / "final")
    assert second_ppo["reference"] == str(base)
    assert rows[2]["start_policy"] == second_ppo["policy"]
    # round 2's RM trains on both rounds' comparisons and starts from the reference
    second_rm = yaml.safe_load((run_dir / "round_2" / "rm" / "config.yaml").read_text())
    assert second_rm["model"] == str(base)
    assert second_rm["train_data"] == [str(run_dir / f"round_{n}" / "comparisons" / "train.jsonl") for n in (1, 2)]
    assert line_count(run_dir / "round_2" / "comparisons" / "train.jsonl") > 0
    # the control of round 2: the same start and seed, round 1's RM; round 1 has no earlier RM, so no control
    control = yaml.safe_load((run_dir / "round_2" / "control_ppo" / "config.yaml").read_text())
    assert control["policy"] == second_ppo["policy"] and control["seed"] == second_ppo["seed"]
    assert control["reward_model"] == str(run_dir / "round_1" / "rm" / "final")
    assert "control_gold_score" in rows[2] and "control_gold_score" not in rows[1]
    assert not (run_dir / "round_1" / "control_ppo").exists()
    # the gain is paired by prompt against the row before: here it equals the difference of the means
    assert rows[2]["gold_gain"] == pytest.approx(rows[2]["gold_score"] - rows[1]["gold_score"], abs=1e-9)
    report = (run_dir / "report.md").read_text()
    assert "| 2 |" in report and (run_dir / "plots" / "gold_per_round.png").is_file()
    assert json.loads((run_dir / "report.json").read_text())["round_2_gold_score"] == pytest.approx(
        rows[2]["gold_score"], abs=1e-6)


def test_a_finished_round_is_not_redone(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    iterate.run(iterate_config(world_dir, base, tmp_path / "it", rounds=1))
    round_dir = tmp_path / "it" / "round_1"
    outputs = [round_dir / "comparisons" / "train.jsonl", round_dir / "rm" / "summary.json",
               round_dir / "ppo" / "summary.json", round_dir / "eval" / "eval.json",
               tmp_path / "it" / "start" / "eval" / "eval.json"]
    stamps = [path.stat().st_mtime_ns for path in outputs]
    iterate.run(iterate_config(world_dir, base, tmp_path / "it", rounds=2, ppo_from="reference"))
    assert [path.stat().st_mtime_ns for path in outputs] == stamps
    assert len(json.loads((tmp_path / "it" / "iterate.json").read_text())["rounds"]) == 3
    # ppo_from=reference: round 2's PPO starts afresh from the reference, yet it ranked round 1's samples
    second_ppo = yaml.safe_load((tmp_path / "it" / "round_2" / "ppo" / "config.yaml").read_text())
    assert second_ppo["policy"] == str(base)
    assert second_ppo["reward_model"] == str(tmp_path / "it" / "round_2" / "rm" / "final")
    assert json.loads((tmp_path / "it" / "iterate.json").read_text())["rounds"][2]["start_policy"] == \
        str(round_dir / "ppo" / "final")


def test_rankings_from_an_export_file(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    export = tmp_path / "label" / "round_1.jsonl"
    export.parent.mkdir()
    ranked = [{"prompt": f"What is {a} plus 2?", "responses": [f"{a} plus 2 is {a + 2}.", "I am not sure."],
               "labeler": "alice"} for a in range(10)]
    write_jsonl(export, ranked)
    heldout = export.parent / "comparisons_heldout.jsonl"  # `chatforge label export`'s held-out labelers
    heldout.write_text(json.dumps({**ranked[0], "labeler": "bob"}) + "\n")
    run_dir = tmp_path / "it"
    iterate.run(iterate_config(world_dir, base, run_dir, rounds=1,
                               rankings_from=str(tmp_path / "label" / "round_{round}.jsonl")))
    round_dir = run_dir / "round_1"
    kept = [r for name in ("train", "val") for r in read_jsonl(round_dir / "comparisons" / f"{name}.jsonl")]
    assert sorted(r["responses"][0] for r in kept) == sorted(r["responses"][0] for r in ranked)
    assert {r["labeler"] for r in kept} == {"alice"}
    rm_config = yaml.safe_load((round_dir / "rm" / "config.yaml").read_text())
    assert rm_config["holdout_labelers"] == []  # no held-out simulated labeler when people rank
    assert rm_config["val_data"] == [str(round_dir / "comparisons" / "val.jsonl"), str(heldout)]


def test_waiting_for_an_export(tmp_path):
    export = tmp_path / "export.jsonl"
    with pytest.raises(ChatforgeError, match="no export holding comparisons"):
        iterate.wait_for_export(export, minutes=0.001, poll_seconds=0.01)
    export.write_text("")  # an export made before anyone ranked: still waiting
    with pytest.raises(ChatforgeError, match="no export holding comparisons"):
        iterate.wait_for_export(export, minutes=0.001, poll_seconds=0.01)
    threading.Timer(0.05, export.write_text, args=("{}\n",)).start()
    assert iterate.wait_for_export(export, minutes=1, poll_seconds=0.01) == export


def test_paired_gain_and_standard_error():
    before = {"a": 0.0, "b": 0.5, "c": 1.0}
    after = {"a": 0.5, "b": 0.5, "c": 1.0, "d": 0.0}  # d is not in `before`: left out
    gain, se = iterate.paired_gain(after, before)
    # gains 0.5, 0, 0: mean 1/6, sample std sqrt(1/12), SE sqrt(1/12) / sqrt(3) = 1/6
    assert gain == pytest.approx(1 / 6) and se == pytest.approx(1 / 6)
    assert math.isnan(iterate.standard_error([1.0]))


def test_gold_by_prompt_averages_each_prompts_samples(tmp_path):
    # prompt-major samples; the same prompt text twice is still two prompts
    samples = [{"prompt": "p", "sample": 0, "model_gold": 1.0}, {"prompt": "p", "sample": 1, "model_gold": 0.0},
               {"prompt": "p", "sample": 0, "model_gold": -1.0}, {"prompt": "p", "sample": 1, "model_gold": -0.5}]
    write_jsonl(tmp_path / "samples.jsonl", samples)
    assert iterate.gold_by_prompt(tmp_path) == {0: 0.5, 1: -0.75}


def test_bad_fields_fail_before_anything_loads(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    with pytest.raises(ChatforgeError, match="comparison_k"):
        iterate_config(world_dir, base, tmp_path / "it", comparison_k=12)
    with pytest.raises(ChatforgeError, match="world.json"):
        iterate_config(world_dir, base, tmp_path / "it", world=str(tmp_path))
    with pytest.raises(ChatforgeError, match="rankings_from"):
        iterate_config(world_dir, base, tmp_path / "it", rankings_from="labels.csv")
    with pytest.raises(ChatforgeError, match="reward_model"):
        iterate_config(world_dir, base, tmp_path / "it", reward_model=str(base))  # a causal LM, not an RM


def test_rm_format_must_read_the_rounds_rankings(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    cfg = iterate_config(world_dir, base, tmp_path / "it", rm={**RM, "format": "trl"})
    with pytest.raises(ChatforgeError, match=r"field 'rm.format': .*format=trl does not read"):
        iterate.run(cfg)
    assert not (tmp_path / "it" / "start").exists()  # nothing sampled or evaluated
