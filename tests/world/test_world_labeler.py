import random

import pytest

from chatforge.errors import ChatforgeError
from chatforge.world import render
from chatforge.world.facts import World
from chatforge.world.gold import GoldScorer
from chatforge.world.labeler import (DEFAULT_AGREEMENT, DEFAULT_LEANINGS, SimulatedLabeler, calibrate_noise,
                                     expected_agreement, expected_panel_agreement, gold_pools, leaning_bonus,
                                     measure_agreement, pairwise_agreement, panel_pools, rank_scores)


@pytest.fixture(scope="module")
def setup():
    world = World.generate(seed=0)
    split = render.split_prompts(world, random.Random(0), render.DEFAULT_TASK_MIX, n_eval=0, n_demo_val=0)
    scorer = GoldScorer(world)
    calibration = render.response_pools(world, split.train, 300, random.Random(1))
    fresh = render.response_pools(world, split.train, 300, random.Random(2))
    return scorer, calibration, fresh


def test_pairwise_agreement_by_hand():
    assert pairwise_agreement([[0, 1, 2]], [[0, 1, 2]]) == 1.0
    assert pairwise_agreement([[0, 1, 2]], [[0, 2, 1]]) == pytest.approx(2 / 3)
    assert pairwise_agreement([[0, 1], [2, 1, 0]], [[1, 0], [0, 1, 2]]) == 0.0
    with pytest.raises(ValueError):
        pairwise_agreement([[0, 1]], [])


def test_expected_agreement_by_hand():
    assert expected_agreement([[1.0, 0.0]], 0.0) == 1.0
    assert expected_agreement([[1.0, 1.0]], 0.0) == 0.5       # a tie is a coin flip
    assert expected_agreement([[1.0, 1.0]], 3.0) == 0.5
    # gap 1, noise 1: p = Phi(1 / sqrt 2) = 0.760250, p^2 + (1 - p)^2 = 0.635460
    assert expected_agreement([[1.0, 0.0]], 1.0) == pytest.approx(0.635460, abs=1e-6)
    assert expected_agreement([[1.0, 0.0, 1.0]], 0.0) == pytest.approx((1 + 1 + 0.5) / 3)


def test_calibration_inverts_expected_agreement():
    pools = [[1.0, 0.85, 0.5, 0.1, 0.0], [1.0, 1.0, -1.0, 0.65]]
    noise = calibrate_noise(pools, 0.73)
    assert expected_agreement(pools, noise) == pytest.approx(0.73, abs=1e-6)
    with pytest.raises(ChatforgeError, match="out of reach"):
        calibrate_noise([[1.0, 1.0, 0.0]], 0.9)              # one tie in three pairs caps it at 0.833


def test_default_labelers_agree_about_73_percent(setup):
    scorer, calibration, fresh = setup
    first = SimulatedLabeler.calibrated(scorer, calibration, seed=1)
    second = SimulatedLabeler(scorer, first.noise, seed=2)
    assert DEFAULT_AGREEMENT == 0.73
    assert 0.2 < first.noise < 0.4
    assert measure_agreement(first, second, fresh) == pytest.approx(0.73, abs=0.03)


def test_noiseless_labelers_agree_except_on_ties(setup):
    scorer, _, fresh = setup
    measured = measure_agreement(SimulatedLabeler(scorer, 0.0, seed=1), SimulatedLabeler(scorer, 0.0, seed=2), fresh)
    assert measured == pytest.approx(expected_agreement(gold_pools(scorer, fresh), 0.0), abs=0.03)
    # no ties: identical rankings, the ideal answer first
    world = World.generate(seed=0)
    name, job = world.people[0].name, world.people[0].job
    other = next(v for v in world.values["job"] if v != job)
    responses = [f"{name} is a {other}.", "I am not sure.", f"{name} is a {job}.", f"Let me think about that. {name} is a {job}."]
    ranks = [SimulatedLabeler(GoldScorer(world), 0.0, seed=s).rank(f"What is {name}'s job?", responses) for s in range(5)]
    assert all(r == [2, 3, 1, 0] for r in ranks)


def test_rank_scores_is_a_seeded_permutation():
    scores = [0.5, 1.0, 0.0, 0.5]
    ranking = rank_scores(scores, 0.3, random.Random(0))
    assert sorted(ranking) == [0, 1, 2, 3]
    assert ranking == rank_scores(scores, 0.3, random.Random(0))
    tied_first = {tuple(rank_scores([1.0, 1.0], 0.0, random.Random(s))) for s in range(20)}
    assert tied_first == {(0, 1), (1, 0)}


def test_leaning_bonus_by_hand():
    assert leaning_bonus({}, "I can't help with that.") == 0.0
    assert leaning_bonus({"length": 0.02}, "Borin is a baker.") == pytest.approx(0.08)
    assert leaning_bonus({"refusal": 0.3, "hedge": 0.2}, "I can't help with that.") == pytest.approx(0.3)
    assert leaning_bonus({"refusal": 0.3, "hedge": 0.2}, "I don't know anyone called Zorvak.") == pytest.approx(0.2)
    assert leaning_bonus({"hedge": -0.2, "length": 0.01}, "I am not sure.") == pytest.approx(-0.16)


def test_panel_agreement_by_hand():
    # two labelers who see one pair in opposite orders never agree without noise
    opposed = [[[1.0, 0.0]], [[0.0, 1.0]]]
    assert expected_panel_agreement(opposed, 0.0) == 0.0
    # noise 1: p = Phi(1 / sqrt 2) = 0.760250 for one, 1 - p for the other: 2 p (1 - p) = 0.364540
    assert expected_panel_agreement(opposed, 1.0) == pytest.approx(0.364540, abs=1e-6)
    # one labeler, or a panel of identical ones, is the no-leaning formula
    pools = [[1.0, 0.85, 0.5, 0.1, 0.0], [1.0, 1.0, -1.0, 0.65]]
    for noise in (0.0, 0.3):
        assert expected_panel_agreement([pools], noise) == expected_agreement(pools, noise)
        assert expected_panel_agreement([pools, pools], noise) == pytest.approx(expected_agreement(pools, noise))


def test_leaning_panel_lands_near_73_percent():
    """The version-2 panel, calibrated on some pools, agrees about 73% with itself on fresh ones (averaged over
    pairs of different labelers), while each labeler leans its own way."""
    world = World.generate(seed=0, n_people=40, version=2, n_strangers=30)
    split = render.split_prompts(world, random.Random(0), render.DEFAULT_TASK_MIX_V2, n_eval=0, n_demo_val=0)
    scorer = GoldScorer(world)
    pools = [render.response_pools(world, split.train, 300, random.Random(seed), task_mix=render.DEFAULT_TASK_MIX_V2,
                                   behaviour=render.DEFAULT_DEMO_BEHAVIOUR) for seed in (1, 2)]
    gold = gold_pools(scorer, pools[0])
    noise = calibrate_noise(gold, 0.73, panel_pools(gold, [r for _, r in pools[0]], list(DEFAULT_LEANINGS)))
    panel = [SimulatedLabeler(scorer, noise, seed=10 + i, leaning=leaning) for i, leaning in enumerate(DEFAULT_LEANINGS)]
    rankings = [[labeler.rank(prompt, responses) for prompt, responses in pools[1]] for labeler in panel]
    pairs = [(a, b) for a in range(len(panel)) for b in range(a + 1, len(panel))]
    measured = sum(pairwise_agreement(rankings[a], rankings[b]) for a, b in pairs) / len(pairs)
    assert measured == pytest.approx(0.73, abs=0.03)
    # the leanings are systematic: without noise, the labeler who dislikes hedging prefers a wrong answer to
    # "I am not sure." (gold 0.0 against 0.1), which the neutral one never does
    person = world.people[0]
    wrong = next(job for job in world.values["job"] if job != person.job)
    responses = [f"{person.name} is {'an' if wrong[0] in 'aeiou' else 'a'} {wrong}.", "I am not sure."]
    prompt = f"What is {person.name}'s job?"
    assert SimulatedLabeler(scorer, 0.0, leaning=DEFAULT_LEANINGS[0]).rank(prompt, responses) == [1, 0]
    assert SimulatedLabeler(scorer, 0.0, leaning=DEFAULT_LEANINGS[3]).rank(prompt, responses) == [0, 1]
