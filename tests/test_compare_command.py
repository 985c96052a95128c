"""`chatforge compare` on the shrunken world: every method's row from one SFT model, and its early errors."""

import json

import pytest

from chatforge.cli import main
from chatforge.compare import METHODS

# every method at a tiny budget: 16 policy samples each, 10 eval prompts answered once
TINY = ["samples=16", "eval_prompts=10", "eval_samples=1", "best_of_n=2", "seeds=[0]", "num_threads=1",
        "overrides.ppo.rollout_batch=8", "overrides.ppo.minibatch_size=4",
        "overrides.ppo_ptx.rollout_batch=8", "overrides.ppo_ptx.minibatch_size=4", "overrides.ppo_ptx.ptx_seq_len=64"]
TINY += [f"overrides.{m}.{k}" for m in ("grpo", "rloo", "reinforce_pp")
         for k in ("rollout_batch=8", "minibatch_size=4", "group_size=4")]
TINY += ["overrides.dpo.batch_prompts=4", "overrides.online_dpo.rounds=1", "overrides.rejection_sampling.rounds=1"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compare_writes_a_row_per_method(small_demo, tmp_path):
    run_dir, code, _ = small_demo
    assert code == 0
    out = tmp_path / "compare"
    assert main(["compare", "--config", "configs/compare_world.yaml", f"from_run={run_dir}", f"out_dir={out}",
                 *TINY]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    rows = {row["method"]: row for row in board["rows"]}
    assert list(rows) == list(METHODS)
    assert rows["sft"]["winrate_vs_sft"] == 0.5 and rows["sft"]["kl"] == 0.0
    for method, row in rows.items():
        for key in ("winrate_vs_sft", "gold_score", "ppl", "seconds"):
            assert row[key] is not None, (method, key)
        assert 0.0 <= row["winrate_vs_sft"] <= 1.0
        expected = {"sft": 0, "best_of_n": 0, "dpo": 0}.get(method)
        assert row["policy_samples"] == expected if expected is not None else 0 < row["policy_samples"] <= 16
    assert rows["best_of_n"]["winrate_vs_sft_greedy"] is None
    assert "| rejection_sampling |" in (out / "leaderboard.md").read_text()
    # a second run finds every result and trains nothing
    assert main(["compare", "--config", "configs/compare_world.yaml", f"from_run={run_dir}", f"out_dir={out}",
                 *TINY]) == 0


@pytest.mark.parametrize("override, message", [
    ("methods=[sft,ppo,sac]", "unknown ['sac']"),
    ("methods=[ppo,dpo]", "must hold 'sft'"),
    ("overrides.gpro.group_size=4", "unknown method(s) ['gpro']"),
    ("overrides.grpo.group_sise=4", "group_sise"),
    ("from_run=/nowhere", "not a finished demo run folder"),
])
def test_compare_stops_on_bad_settings_before_writing(override, message, tmp_path, capsys):
    out = tmp_path / "compare"
    assert main(["compare", "--config", "configs/compare_world.yaml", f"out_dir={out}", override]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
