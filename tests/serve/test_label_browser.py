"""A labeler in real headless Chromium (Debian's, driven by Playwright): sign in, rank K = 4 responses;
the ranking is in the database and in the export, best first. `scripts/setup_browser.sh` installs it."""

import json
import os
from pathlib import Path

import pytest

from chatforge.data.formats import read_comparisons
from chatforge.serve.label import store
from chatforge.serve.label.app import create_app
from chatforge.serve.label.db import Label, open_db
from chatforge.serve.label.export import export_labels
from chatforge.serve.label.server import serve_in_thread

CHROMIUM = "/usr/bin/chromium"
RESPONSES = ["Paris is the capital.", "It is Lyon.", "I think Paris, but I am not sure.", "Bananas."]

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"BROWSER TESTS SKIPPED: {CHROMIUM} is missing; run `bash scripts/setup_browser.sh` as root "
                "(apt-get install chromium)", allow_module_level=True)


def test_a_labeler_ranks_four_responses_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    db = str(tmp_path / "label.db")
    _, make_session = open_db(db)
    with make_session() as session:
        token = store.add_labeler(session, "ann")
        store.add_job(session, "capitals", "ranking", [("What is the capital of France?", RESPONSES)], k=4)
    wanted = {0: 2, 1: 3, 2: 1, 3: 4}  # position -> rank: C, A, B, D from best to worst
    with serve_in_thread(create_app(db)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], timeout=60_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(url + "/")
            assert page.url.endswith("/login")
            page.fill("#name", "ann")
            page.fill("#token", token)
            page.click("#sign-in")
            page.wait_for_url("**/items/*")
            assert page.locator(".response").count() == 4
            assert "What is the capital of France?" in page.inner_text(".turn")
            for position, rank in wanted.items():
                page.select_option(f"#rank_{position}", str(rank))
            page.check("#untruthful")
            page.screenshot(path=str(tmp_path / "item.png"), full_page=True)
            page.click("#submit-ranking")
            page.wait_for_selector("#done")  # the only item is labeled: "nothing left"
            page.goto(url + "/labels")
            assert page.locator("#labels tr").count() == 2  # header + the one label
        finally:
            browser.close()
    with make_session() as session:
        label = session.query(Label).one()
        assert (label.kind, label.ranking, label.untruthful) == ("ranking", [2, 0, 1, 3], True)
        summary = export_labels(session, tmp_path / "export")
    comparisons, _ = read_comparisons(summary["files"]["comparisons"]["path"])
    assert comparisons[0].responses == [RESPONSES[2], RESPONSES[0], RESPONSES[1], RESPONSES[3]]
    assert comparisons[0].labeler == "ann"
    record = json.loads(Path(summary["files"]["comparisons"]["path"]).read_text())
    assert record["flags"] == ["untruthful"]
