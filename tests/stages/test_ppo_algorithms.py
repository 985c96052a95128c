"""The critic-free RL algorithms of the ppo stage: GRPO, RLOO, REINFORCE++ (algorithm, group_size, kl_in)."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from chatforge.data.chat import chat_prompt_ids
from chatforge.data.formats import read_prompts
from chatforge.errors import ChatforgeError
from chatforge.eval.judges import load_judge
from chatforge.generation import SamplingParams, generate
from chatforge.losses import kl_penalized_rewards
from chatforge.metrics import read_metrics
from chatforge.models.io import load_causal_lm
from chatforge.models.templates import load_chat_tokenizer
from chatforge.stages import ppo
from test_ppo import assert_resume_matches, ppo_config, reward_model_dir, run_cli  # noqa: F401 (the RM fixture)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ppo.md"


def sampled_gold(world_dir, model_dir, max_new_tokens: int) -> float:
    """Mean gold score of 4 samples (T=1, a fixed seed) per RL prompt of `model_dir`."""
    tokenizer = load_chat_tokenizer(model_dir)
    model = load_causal_lm(model_dir, device="cpu").eval()
    prompts = [prompt for prompt, _ in read_prompts(world_dir / "prompts" / "rl.jsonl")] * 4
    result = generate(model, tokenizer, [chat_prompt_ids(tokenizer, prompt) for prompt in prompts],
                      SamplingParams(max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, seed=123))
    scores = load_judge(str(world_dir))(prompts, result.texts)
    return sum(scores) / len(scores)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "reinforce_pp"])
def test_critic_free_algorithms_raise_the_gold_score(tiny_world_base, tmp_path, algorithm):
    """With reward_source gold the gold judge is the reward: its score must rise over the starting policy's
    (the same 160 samples drawn from each). On this barely pretrained model what can be learnt is to end answers
    (the judge's cut-off penalty; an empty answer also beats complying with a harmful request). At this high
    learning rate a single run is chaotic: on one machine the gains of seeds 0-3 were GRPO +0.08 / +0.23 / +0.19 /
    +0.13, RLOO +0.13 / -0.00 / +0.18 / +0.19, REINFORCE++ (groups) +0.19 / +0.30 / +0.19 / +0.19 (lr 5e-3 left
    more seeds flat), so the test asks the mean gain of seeds 0-2 to clear 0.05. No reward model folder at all:
    with the gold judge scoring and no critic, none is loaded."""
    world_dir, base = tiny_world_base
    start, gains = sampled_gold(world_dir, base, 12), []
    for seed in (0, 1, 2):
        out = tmp_path / f"{algorithm}_{seed}"
        final = ppo.run(ppo_config(world_dir, base, "", out, algorithm=algorithm, group_size=4, reward_source="gold",
                                   steps=20, rollout_batch=16, minibatch_size=8, ppo_epochs=2, learning_rate=8e-3,
                                   kl_coef=0.01, ptx_coef=0.0, save_every=0, seed=seed))
        gains.append(sampled_gold(world_dir, final, 12) - start)
    assert sum(gains) / 3 > 0.05, gains
    out = tmp_path / f"{algorithm}_0"
    metrics = read_metrics(out)
    assert {"rollout/advantage_mean", "rollout/advantage_std", "rollout/equal_score_groups"} <= set(metrics[-1])
    assert not any(key.startswith("train/value") for key in metrics[-1])
    assert ("train/kl_loss" in metrics[-1]) == (algorithm == "grpo")  # GRPO's KL is in the loss by default
    checkpoint = out / "checkpoints" / "step_0000020"
    assert (checkpoint / "trainer_state.pt").exists() and not (checkpoint / "critic").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == algorithm and summary["group_size"] == 4
    assert f'- "{algorithm.replace("_", "-")}"' in (final / "README.md").read_text()


def test_grpo_resume_gives_the_same_run(tiny_world_base, tmp_path):
    """Stopping after step 2 and resuming gives the same steps 3-4 and weights as one uninterrupted run
    (GRPO with its KL in the loss and the ptx loss: every state a critic-free run carries)."""
    world_dir, base = tiny_world_base
    fields = dict(algorithm="grpo", group_size=4, reward_source="gold")
    assert_resume_matches(lambda out, **more: ppo.run(ppo_config(world_dir, base, "", out, **fields, **more)),
                          tmp_path, ("rollout/reward", "train/policy_loss", "train/kl_loss", "train/ptx_loss"))


def test_rloo_with_lora_and_the_reward_model(tiny_world_base, reward_model_dir, tmp_path):
    """The RM still scores critic-free runs; a LoRA actor trains and its merged policy loads."""
    world_dir, base = tiny_world_base
    final = ppo.run(ppo_config(world_dir, base, reward_model_dir, tmp_path / "rloo", algorithm="rloo", group_size=2,
                               steps=2, lora_r=4, save_every=0))
    AutoModelForCausalLM.from_pretrained(final)
    metrics = read_metrics(tmp_path / "rloo")
    assert metrics[0]["rollout/kl"] == pytest.approx(0.0, abs=1e-4) and metrics[-1]["rollout/kl"] != 0.0
    assert metrics[-1]["rollout/reward"] != metrics[-1]["rollout/gold_score"]  # the RM's reward, not gold


def test_reward_fn_scores_reach_the_advantages_unchanged():
    """reward_source fn, KL in the reward: when every response of a group carries the same KL, GRPO's advantages
    are the function's scores normalised within each group by hand, RLOO's each score minus the mean of the
    group's others (the KL shifts every return alike, and the baseline takes it away)."""
    fn_scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 9.0])
    mask = torch.ones(8, 3)
    mask[1, 2] = mask[6, 1:] = 0  # shorter responses: the advantage sits on their real tokens only
    logprobs = torch.full((8, 3), -1.0) * mask
    ref_logprobs = logprobs - 0.6 / mask.sum(1, keepdim=True) * mask  # a KL of 0.6 per response, however long
    # group 1: mean 1.5, unbiased std sqrt(5/3) = 1.290994; group 2: mean 6, std sqrt(12/3) = 2
    by_hand = {"grpo": [-1.161895, -0.387298, 0.387298, 1.161895, -0.5, -0.5, -0.5, 1.5],
               # the others' means: 2, 5/3, 4/3, 1 and 19/3 (three times), 5
               "rloo": [-2.0, -0.666667, 0.666667, 2.0, -1.333333, -1.333333, -1.333333, 4.0]}
    for algorithm, expected in by_hand.items():
        cfg = ppo.Config(algorithm=algorithm, group_size=4, reward_source="fn", reward_fn="examples.reward_fns:sums",
                         kl_in="reward", kl_coef=0.1)
        scores = ppo.combined_scores(None, fn_scores, torch.ones(8), cfg, 0.0, 1.0)
        rewards, kl = kl_penalized_rewards(logprobs, ref_logprobs, mask, ppo.step_scores(cfg, scores), cfg.kl_coef)
        assert torch.allclose(kl.sum(1), torch.full((8,), 0.6))
        advantages, returns = ppo.step_advantages(cfg, rewards, None, mask)
        assert returns is None
        assert torch.allclose(advantages, torch.tensor(expected)[:, None] * mask, atol=1e-4), algorithm


def test_reinforce_pp_with_groups_subtracts_the_group_mean():
    """REINFORCE++ alone takes the scores as they are; with group_size >= 2 (REINFORCE++-baseline) each minus its
    group's mean, before the returns are whitened over the batch."""
    scores = torch.tensor([1.0, 3.0, 10.0, 14.0])
    plain = ppo.Config(algorithm="reinforce_pp")
    assert plain.responses_per_prompt == 1 and torch.equal(ppo.step_scores(plain, scores), scores)
    grouped = ppo.Config(algorithm="reinforce_pp", group_size=2)
    assert ppo.step_scores(grouped, scores).tolist() == [-1.0, 1.0, -2.0, 2.0]


def test_groups_stay_whole_on_each_rank(monkeypatch):
    """Under torchrun the step's prompts are split over the ranks before each is repeated group_size times: every
    rank holds whole groups, the ranks together the step's rollout_batch / group_size prompts."""
    from chatforge import distributed as dist

    prompts = [(f"p{i}", [i]) for i in range(10)]
    cfg = ppo.Config(algorithm="grpo", group_size=3, rollout_batch=12, seed=0)
    step = [prompt for prompt, _ in ppo.step_prompts(prompts, 1, 4, 0)]
    assert [prompt for prompt, _ in ppo.rank_step_prompts(prompts, 1, cfg)] == [p for p in step for _ in range(3)]
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "rank", lambda rank=rank: rank)
        shares.append([prompt for prompt, _ in ppo.rank_step_prompts(prompts, 1, cfg)])
    assert shares == [[step[0]] * 3 + [step[2]] * 3, [step[1]] * 3 + [step[3]] * 3]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ChatforgeError, match=r"rollout_batch / group_size = 3 prompts a step must be a multiple of "
                                             r"the 2 torchrun processes"):
        ppo.Config(algorithm="grpo", group_size=4, rollout_batch=12).validate_algorithm()


def test_algorithm_defaults():
    algorithms = ("ppo", "grpo", "rloo", "reinforce_pp")
    assert [ppo.Config(algorithm=a).responses_per_prompt for a in algorithms] == [1, 4, 4, 1]
    assert [ppo.Config(algorithm=a).kl_in_loss for a in algorithms] == [False, True, False, False]
    assert not ppo.Config(algorithm="grpo", kl_in="reward").kl_in_loss and ppo.Config(kl_in="loss").kl_in_loss
    assert ppo.Config().uses_critic and not ppo.Config(algorithm="rloo").uses_critic


@pytest.mark.parametrize("args, words", [
    (["algorithm=grpo", "group_size=1"], "ppo: algorithm 'grpo' needs group_size >= 2"),
    (["algorithm=rloo", "group_size=1"], "ppo: algorithm 'rloo' needs group_size >= 2"),
    (["algorithm=grpo", "group_size=3"], "field 'rollout_batch' = 4 must be a multiple of group_size 3"),
    (["algorithm=reinforce_pp", "group_size=-1"], "field 'group_size' must be >= 0"),
    (["algorithm=a2c"], "algorithm")])
def test_bad_algorithm_settings_stop_before_anything_is_written(tiny_world_base, reward_model_dir, tmp_path,
                                                                capsys, args, words):
    world_dir, base = tiny_world_base
    out = tmp_path / "out"
    assert run_cli(world_dir, base, reward_model_dir, out, *args) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err
    assert not out.exists()


def test_the_docs_list_the_algorithm_fields():
    """docs/ppo.md's generated --help block (checked current by tests/test_docs.py) lists the new fields."""
    text = DOCS.read_text()
    help_block = text[text.index("<!-- help: chatforge.stages.ppo -->"):]
    for field in ("algorithm", "group_size", "kl_in"):
        assert f"| `{field}` |" in help_block, field
    assert "## Critic-free algorithms" in text


def test_grpo_tiny_config_reads_the_demo_run():
    from chatforge.config import load_config

    cfg = load_config(ppo.Config, DOCS.parents[1] / "configs" / "grpo_tiny.yaml", validate=False)
    assert cfg.policy == "runs/demo/sft/best" and cfg.reward_model == "runs/demo/rm/final"
    assert cfg.algorithm == "grpo" and cfg.responses_per_prompt == 8 and cfg.kl_in_loss
    cfg.validate_algorithm()


def test_ppo_with_its_critic_raises_the_gold_score_too(tiny_world_base, reward_model_dir, tmp_path):
    """The leaderboard's PPO row on the shrunken world: the same runs as above with a critic (it starts from
    the random RM fixture), the mean gain of seeds 0-2 over the starting policy's samples."""
    world_dir, base = tiny_world_base
    start, gains = sampled_gold(world_dir, base, 12), []
    for seed in (0, 1, 2):
        final = ppo.run(ppo_config(world_dir, base, reward_model_dir, tmp_path / f"ppo_{seed}", reward_source="gold",
                                   steps=20, rollout_batch=16, minibatch_size=8, ppo_epochs=2, learning_rate=8e-3,
                                   critic_learning_rate=8e-3, kl_coef=0.01, ptx_coef=0.0, save_every=0, seed=seed))
        gains.append(sampled_gold(world_dir, final, 12) - start)
    assert sum(gains) / 3 > 0.05, gains
