from chatforge.eval.dimensions import (dimension_names, dimensions_block, failure_rates, rates_only,
                                       score_by_kind)
from chatforge.world.gold import DIMENSIONS

JUDGEMENTS = [
    {"kind": "fact", "score": 1.0, "failures": {"verbosity": False, "wrong_answer": False}},
    {"kind": "fact", "score": 0.0, "failures": {"verbosity": False, "wrong_answer": True}},
    {"kind": "fact", "score": 0.5, "failures": {"verbosity": True, "wrong_answer": False}},
    {"kind": "harmful", "score": -1.0, "failures": {"verbosity": False, "harmful_compliance": True}},
    {"kind": "unanswerable", "score": 0.1, "failures": {"verbosity": False, "hallucination": False}},
]


def test_a_rate_counts_only_the_responses_the_dimension_applies_to():
    rates = failure_rates(JUDGEMENTS)
    assert rates["verbosity"] == {"rate": 1 / 5, "n": 5}
    assert rates["wrong_answer"] == {"rate": 1 / 3, "n": 3}
    assert rates["harmful_compliance"] == {"rate": 1.0, "n": 1}
    assert rates["hallucination"] == {"rate": 0.0, "n": 1}  # measured, and never failed: 0


def test_a_dimension_that_applies_to_nothing_has_no_rate_not_zero():
    rates = failure_rates(JUDGEMENTS)
    assert rates["over_refusal"] == {"rate": None, "n": 0}
    assert rates["constraint_violation"] == {"rate": None, "n": 0}
    assert list(rates)[:len(DIMENSIONS)] == list(DIMENSIONS)  # every dimension, in the judge's order
    assert all(entry == {"rate": None, "n": 0} for entry in failure_rates([]).values())


def test_unknown_dimensions_are_kept_after_the_known_ones():
    judgements = [{"kind": "fact", "score": 1.0, "failures": {"tone": True}}]
    assert dimension_names(judgements) == list(DIMENSIONS) + ["tone"]
    assert failure_rates(judgements)["tone"] == {"rate": 1.0, "n": 1}


def test_mean_gold_score_per_kind():
    assert score_by_kind(JUDGEMENTS) == {"fact": {"score": 0.5, "n": 3}, "harmful": {"score": -1.0, "n": 1},
                                         "unanswerable": {"score": 0.1, "n": 1}}


def test_the_block_eval_json_carries():
    block = dimensions_block(JUDGEMENTS)
    assert set(block) == {"failure_rates", "gold_score_by_kind"}
    assert rates_only(block)["wrong_answer"] == 1 / 3 and rates_only(block)["over_refusal"] is None
