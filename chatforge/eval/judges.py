"""Judges of generated answers: the built-in world's gold scorer, or a trained reward model."""

from __future__ import annotations

from pathlib import Path

from chatforge.errors import ChatforgeError


class GoldJudge:
    """Mean-able gold scores (best 1.0) from the built-in world's facts."""

    name = "gold"

    def __init__(self, world_dir: str | Path):
        from chatforge.world.gold import GoldScorer

        self.scorer = GoldScorer.from_dir(world_dir)

    def __call__(self, prompts: list, responses: list[str]) -> list[float]:
        return self.scorer.score_batch(prompts, responses)

    def judgements(self, prompts: list, responses: list[str]) -> list[dict]:
        """The gold scorer's full judgement of each response: kind, verdict, score, failures, ..."""
        if len(prompts) != len(responses):
            raise ValueError(f"judgements: {len(prompts)} prompts but {len(responses)} responses")
        return [self.scorer.judge(prompt, response) for prompt, response in zip(prompts, responses)]


def load_judge(gold_world: str = "", reward_model: str = "", device=None):
    """The gold judge when a world folder is given, else a reward-model judge, else None."""
    if gold_world:
        if not (Path(gold_world) / "world.json").exists():
            raise ChatforgeError(f"{gold_world}: no world.json; point gold_world at a `chatforge world` folder")
        return GoldJudge(gold_world)
    if reward_model:
        from chatforge.models.reward import RewardJudge

        return RewardJudge(reward_model, device=device)
    return None
