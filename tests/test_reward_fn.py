from pathlib import Path

import pytest
import torch

from chatforge.errors import ChatforgeError
from chatforge.losses import gae, kl_penalized_rewards
from chatforge.reward_fn import RewardFn, check_scores
from chatforge.stages import ppo

FUNCTIONS = '''
def constant(prompts, responses):
    return [0.5] * len(responses)

def last_user_message(prompts, responses):
    return [float(len(messages[-1]["content"])) for messages in prompts]
'''


@pytest.fixture
def module_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(FUNCTIONS)
    return path


def test_a_reward_function_gets_messages_and_returns_floats(module_file):
    reward_fn = RewardFn(f"{module_file}:last_user_message")
    assert reward_fn(["abc", [{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}]],
                     ["x", "y"]) == [3.0, 5.0]


def test_bad_results_are_one_line_errors():
    for result, words in ((None, "returned a NoneType"), ([1.0], "returned 1 scores for 2 responses"),
                          (["high", "low"], r"'high' \(str\) at position 0"), ([1.0, float("nan")], "nan")):
        with pytest.raises(ChatforgeError, match=words) as error:
            check_scores(result, 2, "reward_fn m:f")
        assert "\n" not in str(error.value)
    assert check_scores((1, 0.5), 2, "reward_fn m:f") == [1.0, 0.5]


def test_a_reward_function_score_reaches_the_advantages_unchanged(module_file):
    """reward_source fn, kl_coef 0, zero values: the fn's score (times its weight) is the reward at the last
    token, and GAE spreads it back as (gamma * lambda)^k; the RM's normalisation never touches it."""
    scores_fn = torch.tensor(RewardFn(f"{module_file}:constant")(["p", "q"], ["a", "b"]))  # [0.5, 0.5]
    cfg = ppo.Config(reward_source="fn", reward_fn_weight=2.0, kl_coef=0.0, discount=1.0, lam=0.5)
    finished = torch.tensor([1.0, 0.0])  # the second response never ended: minus missing_eos_penalty 1.0
    scores = ppo.combined_scores(None, scores_fn, finished, cfg, reward_mean=5.0, reward_std=10.0)
    assert scores.tolist() == [1.0, 0.0]
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    logprobs = torch.randn(2, 3)
    rewards, _ = kl_penalized_rewards(logprobs, logprobs + 1.0, mask, scores, cfg.kl_coef)
    assert rewards.tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    scores = ppo.combined_scores(None, torch.tensor([0.5, 1.5]), torch.ones(2), cfg, 5.0, 10.0)  # [1.0, 3.0]
    rewards, _ = kl_penalized_rewards(logprobs, logprobs, mask, scores, cfg.kl_coef)
    advantages, returns = gae(rewards, torch.zeros(2, 3), mask, cfg.discount, cfg.lam)
    assert advantages.tolist() == [[0.25, 0.5, 1.0], [1.5, 3.0, 0.0]]
    assert returns.tolist() == advantages.tolist()


def test_the_fn_score_is_added_after_the_rm_normalisation():
    cfg = ppo.Config(reward_fn_weight=0.5, missing_eos_penalty=0.0)
    scores = ppo.combined_scores(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 0.0]), torch.ones(2), cfg, 1.0, 2.0)
    assert scores.tolist() == [1.0 + 0.5, 0.0]


def test_the_worked_example_checks_sums():
    sums = RewardFn(f"{Path(__file__).parents[1] / 'examples' / 'reward_fns.py'}:sums")  # as `chatforge ppo` loads it
    prompts = [[{"role": "user", "content": text}] for text in (
        "What is 7 plus 5?", "What is 7 + 5?", "How much is 3 plus 3?", "Add 2 and 0.",
        "Write it as an equation: What is 4 plus 5?", "What is 7 plus 5?", "What is 7 plus 5?",
        "What is Borin's job?")]
    responses = ["7 plus 5 is 12.", "12", "3 plus 3 is 6.", "2 plus 0 is 2.", "4 + 5 = 9.",
                 "7 plus 5 is 13.", "It is 12 or 13.", "Borin is a baker, 12."]
    assert sums(prompts, responses) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
