from chatforge.demo_report import overoptimization, smoothed


def test_smoothed_is_a_trailing_mean():
    assert smoothed([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_overoptimization_finds_where_gold_stops_following_reward():
    # reward rises all the way; gold rises for 10 steps, then falls
    metrics = [{"step": s, "rollout/reward": 0.1 * s, "rollout/gold_score": min(s, 10) - max(0, s - 10)}
               for s in range(1, 21)]
    shape = overoptimization(metrics, window=1)
    assert shape["peak_step"] == 10
    assert shape["gold_peak"] == 10 and shape["gold_end"] == 0
    assert shape["reward_end"] > shape["reward_peak"] > shape["reward_start"]
