"""The end-to-end demo on a shrunken world: every stage runs and the scoreboard has its keys."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatforge import demo, environment
from chatforge.cli import main
from chatforge.config import load_config
from chatforge.errors import ChatforgeError
from small_world import REPO, SMALL, SMALL_DEMO, THREADS

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
@pytest.mark.timeout(1200)
def test_demo_end_to_end(small_demo):
    run_dir, code, out = small_demo
    assert code == 0, out[-3000:]
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
    assert report["versions"] == environment.versions() and report["machine"]["torch_threads"] == str(THREADS)
    assert report["machine"]["cpu"] and "| `versions` | python " in (run_dir / "report.md").read_text()
    assert report["peak_rss_mb"] > 50 and set(report["stage_seconds"]) >= {"world", "tokenizer", "pretrain", "sft", "rm", "report"}
    assert abs(sum(report["stage_seconds"].values()) - report["wall_seconds"]) < 0.05 * report["wall_seconds"] + 5


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_pipeline_commands_give_the_demos_numbers(small_demo, tmp_path):
    """examples/pipeline.sh (each stage a `chatforge` process, then `demo report_only=true`) on the same shrunken
    world writes the report card the demo wrote in one process: every number equal, times and memory aside."""
    demo_dir, code, out = small_demo
    assert code == 0, out[-3000:]
    run_dir = tmp_path / "pipeline"
    stage_args = {f"{stage.upper()}_ARGS": " ".join(items) for stage, items in SMALL.items() if stage != "eval"}
    stage_args["SFT_ARGS"] += " eval_skip=20 eval_max_prompts=20"  # the demo's eval_prompts / select_prompts
    report_args = " ".join([f"eval.{item}" for item in SMALL["eval"]] + SMALL_DEMO)
    env = {**os.environ, **stage_args, "REPORT_ARGS": report_args, "CHATFORGE": f"{sys.executable} -m chatforge.cli",
           "OMP_NUM_THREADS": str(THREADS)}
    done = subprocess.run(["bash", "examples/pipeline.sh", str(run_dir)], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    demo_report = json.loads((demo_dir / "report.json").read_text())
    pipeline_report = json.loads((run_dir / "report.json").read_text())
    assert "ppo_ptx_winrate_vs_sft" in pipeline_report and "bon_gold_score" in pipeline_report
    differ = {key: (demo_report.get(key), value) for key, value in pipeline_report.items()
              if key not in ("wall_seconds", "stage_seconds", "peak_rss_mb") and demo_report.get(key) != value}
    assert not differ, differ  # (demo, pipeline) of each key that differs


def test_report_only_names_the_stage_a_run_folder_lacks(tmp_path, capsys):
    code = main(["demo", "--config", "configs/demo.yaml", f"run_dir={tmp_path / 'empty'}", "report_only=true"])
    assert code == 2
    err = capsys.readouterr().err
    assert "world.json: missing, so the world stage has not finished" in err and "examples/pipeline.sh" in err


def test_the_old_comparison_keys_set_the_rank_stage(capsys):
    cfg = load_config(demo.Config, overrides=["comparison_prompts=60", "labelers=4", "rank.k=3"], validate=False)
    assert cfg.rank == {"max_prompts": 60, "labelers": 4, "k": 3}
    assert "'comparison_prompts' is the old name of 'rank.max_prompts'" in capsys.readouterr().err


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


def test_stage_seconds_name_each_stage_shortly_and_sum_the_reports_phases():
    phases = {"world": 12.1, "rank: SFT samples ranked by simulated labelers": 20.0,
              "ppo_ptx (ptx_coef 1.0, kl_coef 0.1)": 244.0, "report: the base model's facts": 3.4, "report: SFT's answers": 0.5}
    assert demo.short_phase_seconds(phases) == {"world": 12.1, "rank": 20.0, "ppo_ptx": 244.0, "report": 3.9}
