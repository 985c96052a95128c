"""The end-to-end demo on a shrunken world: every stage runs and the scoreboard has its keys."""

import json
from pathlib import Path

import pytest

from chatforge import demo
from chatforge.cli import main
from chatforge.config import load_config
from chatforge.errors import ChatforgeError

REQUIRED_KEYS = ("wall_seconds", "unigram_loss", "base_val_loss", "base_fact_accuracy", "labeler_agreement",
                 "rm_val_accuracy", "base_gold_score", "sft_gold_score", "ppo_gold_score", "ppo_ptx_gold_score",
                 "ppo_ptx_winrate_vs_sft", "bon_gold_score", "base_ppl", "sft_ppl", "ppo_ppl", "ppo_ptx_ppl",
                 "ppo_ptx_kl", "weak_kl_gold_peak_step", "weak_kl_gold_end", "oracle_winrate_vs_sft",
                 "ppo_ptx_winrate_vs_sft_greedy", "sft_wrong_answer_rate", "ppo_ptx_wrong_answer_rate",
                 "sft_verbosity_rate_sampled", "bon_verbosity_rate")
# the rate keys: a number, or null where the dimension applies to no held-out prompt
RATE_KEYS = tuple(f"{name}_{dimension}_rate" for name in ("sft", "ppo_ptx")
                  for dimension in ("hallucination", "harmful_compliance", "over_refusal", "constraint_violation"))
INTERVAL_KEYS = ("ppo_ptx_winrate_vs_sft_ci95", "ppo_ptx_winrate_vs_sft_greedy_ci95", "ppo_winrate_vs_sft_ci95",
                 "oracle_winrate_vs_sft_ci95", "base_gold_score_ci95", "sft_gold_score_ci95", "ppo_gold_score_ci95",
                 "ppo_ptx_gold_score_ci95", "bon_gold_score_ci95", "sft_sampled_gold_score_ci95",
                 "ppo_ptx_sampled_gold_score_ci95")


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    run_dir = tmp_path / "demo"
    code = main(["demo", "--config", "configs/demo.yaml", f"run_dir={run_dir}",
                 "world.n_people=8", "world.n_towns=4", "world.train_docs=600", "world.val_docs=40",
                 "world.train_demos=200", "world.val_demos=20", "world.rl_prompts=60", "world.eval_prompts=40",
                 "world.calibration_prompts=40", "tokenizer.vocab_size=512",
                 "pretrain.max_steps=40", "pretrain.eval_every=20", "pretrain.save_every=20", "pretrain.batch_size=8",
                 "pretrain.seq_len=128", "sft.epochs=2", "sft.max_len=128", "rm.max_len=128", "eval_prompts=20",
                 "select_prompts=20", "comparison_prompts=60", "ppo.steps=3", "ppo.rollout_batch=8",
                 "ppo.minibatch_size=4", "ppo.ptx_seq_len=64", "eval.samples_per_prompt=1", "eval.ppl_tokens=1024",
                 "best_of_n=2", "weak_kl_coef=0.05", "weak_kl_steps=3", "oracle_run=true"])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((run_dir / "report.json").read_text())
    for key in REQUIRED_KEYS:
        assert isinstance(report[key], (int, float)), key
    for key in RATE_KEYS:
        assert report[key] is None or 0.0 <= report[key] <= 1.0, key
    for key in INTERVAL_KEYS:
        low, high = report[key]
        assert low <= report[key[:-len("_ci95")]] <= high, key
    assert "## Per-dimension evaluation" in (run_dir / "report.md").read_text()
    assert (run_dir / "plots" / "failure_rates.png").exists()
    eval_json = json.loads((run_dir / "eval" / "ppo_ptx" / "eval.json").read_text())
    assert "dimensions" in eval_json["model"] and "dimensions" in eval_json["best_of_n"]
    assert report["base_val_loss"] < report["unigram_loss"]
    assert (run_dir / "report.md").read_text().count("![") >= 2
    for plot in ("pretrain_loss", "ppo_reward", "ppo_gold", "ppo_kl"):
        assert (run_dir / "plots" / f"{plot}.png").exists(), plot
    assert report["base_ppl"] > 1.0 and 0.0 <= report["ppo_ptx_winrate_vs_sft"] <= 1.0
    assert "report card:" in out


def test_demo_rejects_a_typo_in_a_later_stage_before_running(tmp_path, capsys):
    code = main(["demo", "--config", "configs/demo.yaml", f"run_dir={tmp_path / 'demo'}", "sft.epochz=3"])
    assert code == 2
    assert "unknown field 'epochz'" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "world").exists()  # nothing ran


def fake_chain(chains: list):
    """A stand-in for one demo chain: records its config and writes a small report.json."""
    def run_chain(cfg):
        chains.append(cfg)
        seed = cfg.world["seed"]
        Path(cfg.run_dir).mkdir(parents=True)
        (Path(cfg.run_dir) / "report.json").write_text(json.dumps(
            {"ppo_ptx_winrate_vs_sft": 0.6 + seed / 10, "ppo_ptx_winrate_vs_sft_ci95": [0.5, 0.8], "wall_seconds": 10}))
        return Path(cfg.run_dir) / "report.md"
    return run_chain


def test_seeds_run_a_chain_each_and_skip_the_finished_ones(tmp_path, monkeypatch, capsys):
    chains = []
    monkeypatch.setattr(demo, "run_chain", fake_chain(chains))
    run_dir = tmp_path / "demo"
    finished = run_dir / "seed_1"  # an interrupted seeds run had finished seed 1
    finished.mkdir(parents=True)
    (finished / "report.json").write_text(json.dumps({"ppo_ptx_winrate_vs_sft": 0.65, "wall_seconds": 12}))
    code = main(["demo", "--config", "configs/demo.yaml", f"run_dir={run_dir}", "seeds=0,1,2", "pretrain.seed=7"])
    assert code == 0, capsys.readouterr().err
    assert [cfg.run_dir for cfg in chains] == [str(run_dir / "seed_0"), str(run_dir / "seed_2")]
    second = chains[1]
    assert second.seeds == [] and second.world["seed"] == 2
    assert second.sft["seed"] == second.rm["seed"] == second.ppo["seed"] == second.eval["seed"] == 2
    assert second.pretrain["seed"] == 7  # the user's own per-stage seed is kept for every chain
    seeds = json.loads((run_dir / "seeds.json").read_text())
    assert seeds["seeds"] == [0, 1, 2]
    assert seeds["per_seed"]["1"]["ppo_ptx_winrate_vs_sft"] == 0.65
    assert seeds["mean"]["ppo_ptx_winrate_vs_sft"] == pytest.approx((0.6 + 0.65 + 0.8) / 3)
    text = (run_dir / "report.md").read_text()
    assert "| key | seed 0 | seed 1 | seed 2 | mean | std | min .. max |" in text and "- seed 2: " in text
    assert "seed 1: " in capsys.readouterr().out


def test_without_seeds_one_chain_runs_in_run_dir(tmp_path, monkeypatch):
    chains = []
    monkeypatch.setattr(demo, "run_chain", lambda cfg: chains.append(cfg) or Path(cfg.run_dir) / "report.md")
    cfg = demo.Config(run_dir=str(tmp_path / "demo"))
    assert demo.run(cfg) == tmp_path / "demo" / "report.md"
    assert chains == [cfg] and not (tmp_path / "demo" / "seeds.json").exists()


def test_seeds_are_a_list_or_comma_separated():
    for given, seeds in (("seeds=0,1,2", [0, 1, 2]), ("seeds=[3, 4]", [3, 4]), ("seeds=5", [5]), ("seeds=[]", [])):
        assert load_config(demo.Config, overrides=[given], validate=False).seeds == seeds
    with pytest.raises(ChatforgeError, match="field 'seeds'"):
        load_config(demo.Config, overrides=["seeds=0,one"], validate=False)
    with pytest.raises(ChatforgeError, match="names a seed twice"):
        demo.Config(seeds=[1, 1])
