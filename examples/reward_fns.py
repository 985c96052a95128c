"""A worked reward function: a verifiable rule from the built-in world, scored from the text alone.

    chatforge ppo --config configs/ppo_tiny.yaml reward_fn=examples.reward_fns:sums reward_fn_weight=0.5

(run from the repository root; `reward_fn=examples/reward_fns.py:sums` works from anywhere). PPO calls it
once per rollout batch with the prompts as chat message lists and the decoded responses; it must return one
float per response. See docs/ppo.md, "Reward functions".
"""

import re

# The world's sum questions: "What is 7 plus 5?", "What is 7 + 5?", "How much is 7 plus 5?", "Add 7 and 5."
# (also behind an equation frame: "Write it as an equation: What is 7 plus 5?").
SUM_QUESTION = re.compile(r"(\d+) (?:plus|\+) (\d+)\?|Add (\d+) and (\d+)\.")
NUMBER = re.compile(r"\d+")


def sums(prompts: list[list[dict]], responses: list[str]) -> list[float]:
    """1.0 when a sum question's response states the sum and no other number (the operands echoed back
    aside), else 0.0; 0.0 for every other prompt (a rule says nothing about them)."""
    return [sum_correct(messages[-1]["content"], response) for messages, response in zip(prompts, responses)]


def sum_correct(question: str, response: str) -> float:
    """The rule on one question (the last user message) and its response."""
    match = SUM_QUESTION.search(question)
    if match is None:
        return 0.0
    a, b = (int(n) for n in match.groups() if n is not None)
    numbers = [int(n) for n in NUMBER.findall(response)]
    for operand in (a, b):  # "7 plus 5 is 12." echoes the operands: drop one copy of each
        if operand in numbers:
            numbers.remove(operand)
    return 1.0 if numbers and all(n == a + b for n in numbers) else 0.0
