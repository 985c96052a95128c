import json

import pytest
import torch

from chatforge.cli import main
from chatforge.config import load_config
from chatforge.data.jsonl import read_jsonl
from chatforge.errors import ChatforgeError
from chatforge.models.io import load_causal_lm, load_tokenizer, save_hf_folder
from chatforge.models.reward import build_reward_model
from chatforge.stages import evaluate
from chatforge.world.gold import DIMENSIONS

PER_MODEL = {"gold_score", "reward_mean", "kl_to_reference", "ppl", "response_length", "eos_rate"}


@pytest.fixture(scope="module")
def policy_and_rm(tiny_world_base, tmp_path_factory):
    """A perturbed copy of the base model (the "policy") and a reward model with a random head."""
    _, base = tiny_world_base
    root = tmp_path_factory.mktemp("eval_models")
    tokenizer = load_tokenizer(base)
    torch.manual_seed(0)
    policy = load_causal_lm(base)
    with torch.no_grad():
        policy.lm_head.weight.add_(torch.randn_like(policy.lm_head.weight), alpha=0.05)
    reward_model = build_reward_model(base, tokenizer.pad_token_id)
    torch.nn.init.normal_(reward_model.score.weight)
    return save_hf_folder(policy, tokenizer, root / "policy"), save_hf_folder(reward_model, tokenizer, root / "rm")


def test_eval_compares_model_baseline_and_best_of_n(tiny_world_base, policy_and_rm, tmp_path, capsys):
    world_dir, base = tiny_world_base
    policy, rm = policy_and_rm
    out = tmp_path / "eval"
    code = main(["eval", "--config", "configs/eval.yaml", f"model={policy}", f"baseline={base}",
                 f"prompts={world_dir / 'prompts' / 'eval.jsonl'}", "max_prompts=3", "samples_per_prompt=2",
                 "max_new_tokens=6", f"gold_world={world_dir}", f"reward_model={rm}",
                 f"ppl_corpus=[{world_dir / 'corpus' / 'val.jsonl'}]", "ppl_tokens=256", "best_of_n=3",
                 f"out_dir={out}", "device=cpu", "num_threads=1"])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    for name in ("model", "baseline", "best_of_n"):
        assert PER_MODEL <= set(report[name]), name
    assert report["model"]["kl_to_reference"] > 0 and report["baseline"]["kl_to_reference"] == 0.0
    assert report["best_of_n"]["ppl"] == report["baseline"]["ppl"] > 1.0
    for key in ("winrate_gold", "winrate_rm", "winrate_gold_vs_best_of_n", "winrate_rm_vs_best_of_n"):
        assert 0.0 <= report[key] <= 1.0
        low, high = report[f"{key}_ci95"]  # paired bootstrap over the 3 prompts
        assert 0.0 <= low <= report[key] <= high <= 1.0
    for name in ("model", "baseline", "best_of_n"):
        low, high = report[name]["gold_score_ci95"]
        assert low <= report[name]["gold_score"] <= high
        dimensions = report[name]["dimensions"]
        assert set(DIMENSIONS) <= set(dimensions["failure_rates"])
        for entry in dimensions["failure_rates"].values():  # no rate where a dimension applies to no answer
            assert (entry["rate"] is None) == (entry["n"] == 0)
        assert dimensions["failure_rates"]["verbosity"]["n"] == (3 if name == "best_of_n" else 6)
        kinds = dimensions["gold_score_by_kind"]
        assert sum(entry["n"] for entry in kinds.values()) == (3 if name == "best_of_n" else 6)
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 3 * 2 and [s["sample"] for s in samples[:2]] == [0, 1]
    assert {"prompt", "model", "baseline", "model_gold", "baseline_gold", "model_reward", "best_of_n",
            "model_failures", "baseline_failures", "best_of_n_failures"} <= set(samples[0])
    assert set(samples[0]["model_failures"]) <= set(DIMENSIONS)
    out = capsys.readouterr().out
    assert "winrate_gold" in out and "verbosity rate" in out


def test_greedy_eval_of_the_model_alone(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    cfg = evaluate.Config(model=str(base), prompts=str(world_dir / "prompts" / "eval.jsonl"), max_prompts=2,
                          temperature=0.0, max_new_tokens=4, gold_world=str(world_dir), out_dir=str(tmp_path),
                          device="cpu")
    report = json.loads(evaluate.run(cfg).read_text())
    assert report["samples_per_prompt"] == 1 and "baseline" not in report
    assert report["model"]["kl_to_reference"] is None and report["model"]["ppl"] is None
    assert 0.0 <= report["model"]["eos_rate"] <= 1.0
    assert len(report["model"]["gold_score_ci95"]) == 2 and "dimensions" in report["model"]


def test_bad_inputs_name_the_field(tiny_world_base, policy_and_rm, tmp_path, capsys):
    world_dir, base = tiny_world_base
    _, rm = policy_and_rm
    prompts = str(world_dir / "prompts" / "eval.jsonl")
    assert main(["eval", f"model={base}", f"prompts={tmp_path / 'nowhere.jsonl'}"]) == 2
    assert "field 'prompts'" in capsys.readouterr().err
    with pytest.raises(ChatforgeError, match="'best_of_n' needs 'reward_model'"):
        load_config(evaluate.Config, overrides=[f"model={base}", f"baseline={base}", f"prompts={prompts}",
                                                "best_of_n=4"])
    for not_a_reward_model in (world_dir, base):  # not a model folder; a causal LM, not a classifier
        with pytest.raises(ChatforgeError, match="field 'reward_model'"):
            load_config(evaluate.Config, overrides=[f"model={base}", f"prompts={prompts}",
                                                    f"reward_model={not_a_reward_model}"])
