"""Load: 20 simulated labelers, each signed in as itself, submit rankings for a minute against the
server (its own process) on loopback; the database holds exactly the acknowledged labels, each once.
CHATFORGE_LABEL_LOAD_SECONDS sets the duration (default 60)."""

import os

import pytest

from chatforge.serve.label.load import check_stored, prepare_load_db, simulate_labelers
from chatforge.serve.label.server import serve_in_subprocess

LABELERS = 20


@pytest.mark.slow
def test_twenty_labelers_for_a_minute_store_every_label_once(tmp_path, capsys):
    seconds = float(os.environ.get("CHATFORGE_LABEL_LOAD_SECONDS", "60"))
    db = str(tmp_path / "load.db")
    credentials = prepare_load_db(db, LABELERS, items=3000, k=4, labelers_per_item=2)
    with serve_in_subprocess(db) as url:
        # a generous client timeout: on a starved CI box a page can take 30 s; that is slow, not a lost label
        result = simulate_labelers(url, credentials, seconds, timeout_s=120.0)
    check = check_stored(db, result)
    submit, page = ({key: "-" if value is None else f"{value:.0f}" for key, value in result.percentiles(values).items()}
                    for values in (result.submit_latency_s, result.page_latency_s))
    with capsys.disabled():  # the numbers show in a plain `pytest -q` run too
        print(f"\nlabel load: {LABELERS} labelers, {result.seconds:.0f} s, {check['acknowledged']} labels acknowledged "
              f"({check['acknowledged'] / max(result.seconds, 1e-9):.1f}/s), {check['stored']} stored; submit p50 "
              f"{submit['p50_ms']} ms, p95 {submit['p95_ms']} ms; next item + page p50 "
              f"{page['p50_ms']} ms, p95 {page['p95_ms']} ms; {len(result.ran_out)} ran out of items")
    assert result.failures == []
    assert check["acknowledged"] >= LABELERS  # every labeler got through at least once on average
    assert check["stored"] == check["acknowledged"]
    assert (check["missing"], check["unexpected"], check["wrong_ranking"], check["duplicates"]) == (0, 0, 0, 0)
