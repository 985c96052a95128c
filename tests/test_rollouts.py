import pytest
import torch

from chatforge.rollouts import SamplingConfig, combined_scores, normalisation


def scores(raw, fn=None, finished=(1.0, 1.0, 0.0)):
    return {"raw": torch.tensor(raw), "fn": None if fn is None else torch.tensor(fn), "gold": None,
            "finished": torch.tensor(finished)}


def test_the_score_is_normalised_source_plus_weighted_fn_minus_the_eos_penalty():
    cfg = SamplingConfig(reward_source="rm", reward_fn="m:f", reward_fn_weight=0.5, missing_eos_penalty=1.0)
    raw = [1.0, 3.0, 5.0]
    mean, std = normalisation(cfg, torch.tensor(raw))
    assert (mean, std) == (3.0, 2.0)  # the first round's samples: mean 3, sample std 2
    combined = combined_scores(scores(raw, fn=[2.0, 0.0, 4.0]), cfg, mean, std)
    # (1-3)/2 + 0.5*2 = 0; (3-3)/2 + 0 = 0; (5-3)/2 + 0.5*4 - 1 (never ended) = 2
    assert combined.tolist() == pytest.approx([0.0, 0.0, 2.0])


def test_a_reward_function_alone_is_never_normalised():
    cfg = SamplingConfig(reward_source="fn", reward_fn="m:f", reward_fn_weight=2.0, missing_eos_penalty=0.5)
    assert normalisation(cfg, torch.tensor([1.0, 5.0])) == (0.0, 1.0)
    fn = [1.0, -1.0, 3.0]
    assert combined_scores(scores(fn, fn=fn), cfg, 0.0, 1.0).tolist() == pytest.approx([2.0, -2.0, 5.5])
