"""Simulated labelers against a running labeling server: each signs in as itself and submits random
rankings for a while; every acknowledged submission (a 303 back to /next) is recorded, so a caller can
check the database holds exactly those, once each. Beside them, optionally, a flood of wrong sign-ins
from another process. Used by the load test and benchmarks/label_load.py."""

from __future__ import annotations

import random
import re
import statistics
import threading
import time
from dataclasses import dataclass, field

NONCE = re.compile(r'name="nonce" value="([^"]+)"')
ACTION = re.compile(r'action="/items/(\d+)"')
RANK = re.compile(r'name="rank_(\d+)"')


@dataclass
class LoadResult:
    """What the simulated labelers saw: acknowledged {(item id, labeler): ranking}, latencies, failures."""
    acknowledged: dict = field(default_factory=dict)
    submit_latency_s: list = field(default_factory=list)  # POST /items/N
    page_latency_s: list = field(default_factory=list)    # GET /next + the item page it leads to
    failures: list = field(default_factory=list)           # (labeler, what, status or error)
    ran_out: list = field(default_factory=list)            # labelers who found no item left
    seconds: float = 0.0

    def percentiles(self, values: list) -> dict:
        """p50 / p95 / max in milliseconds."""
        if not values:
            return {"p50_ms": None, "p95_ms": None, "max_ms": None}
        ordered = sorted(values)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
        return {"p50_ms": statistics.median(ordered) * 1000, "p95_ms": pick(0.95), "max_ms": ordered[-1] * 1000}


def form_nonce(html: str) -> str:
    """The one-time nonce of the (first) form on a page."""
    match = NONCE.search(html)
    if match is None:
        raise ValueError("the page has no form nonce")
    return match.group(1)


def sign_in(client, name: str, token: str):
    """Sign in through the form like a browser (an httpx2 or Starlette test client); returns the POST's response."""
    login = client.get("/login")
    return client.post("/login", data={"name": name, "token": token, "nonce": form_nonce(login.text)},
                       follow_redirects=False)


def simulate_labelers(base_url: str, credentials: list[tuple[str, str]], seconds: float, seed: int = 0,
                      timeout_s: float = 30.0, on_start=None) -> LoadResult:
    """One thread per (name, token): sign in; then, for `seconds` from when all have signed in (when
    `on_start()` is called), take the next item and rank it at random, again and again."""
    import httpx2

    result, lock = LoadResult(), threading.Lock()
    window = {}  # the clock starts once everyone has signed in (scrypt is slow on purpose)

    def start_window():
        window.update(start=time.monotonic())
        if on_start is not None:
            on_start()

    barrier = threading.Barrier(len(credentials), action=start_window)

    def labeler(index: int, name: str, token: str):
        rng = random.Random(seed * 1000 + index)
        with httpx2.Client(base_url=base_url, timeout=timeout_s, follow_redirects=False) as client:
            try:
                signed_in = sign_in(client, name, token).status_code
            except Exception as exc:  # the others still wait at the barrier for this one
                signed_in = f"{type(exc).__name__}: {exc}"
            try:
                barrier.wait(timeout=4 * timeout_s)
            except threading.BrokenBarrierError:
                signed_in = signed_in if signed_in != 303 else "another labeler never signed in"
            if signed_in != 303:
                with lock:
                    result.failures.append((name, "sign in", signed_in))
                return
            while time.monotonic() < window["start"] + seconds:
                start = time.perf_counter()
                try:
                    step = client.get("/next")
                    if step.status_code == 200:  # "nothing left to label"
                        with lock:
                            result.ran_out.append(name)
                        return
                    page = client.get(step.headers["location"])
                    fetched = time.perf_counter()
                    item_id, k = int(ACTION.search(page.text).group(1)), len(RANK.findall(page.text))
                    ranking = list(range(k))
                    rng.shuffle(ranking)
                    form = {"nonce": form_nonce(page.text), "action": "rank"}
                    form.update({f"rank_{position}": str(rank) for rank, position in enumerate(ranking, start=1)})
                    posted = client.post(f"/items/{item_id}", data=form)
                    done = time.perf_counter()
                except Exception as exc:  # a dropped connection or a page without a form: count it, go on
                    with lock:
                        result.failures.append((name, "request", f"{type(exc).__name__}: {exc}"))
                    continue
                with lock:
                    result.page_latency_s.append(fetched - start)
                    result.submit_latency_s.append(done - fetched)
                    if posted.status_code == 303 and posted.headers.get("location") == "/next":
                        result.acknowledged[(item_id, name)] = ranking
                    else:
                        result.failures.append((name, "submit", posted.status_code))

    threads = [threading.Thread(target=labeler, args=(i, name, token), daemon=True)
               for i, (name, token) in enumerate(credentials)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # each stops by itself: the window, then at most one request's timeout
    result.seconds = time.monotonic() - window.get("start", time.monotonic())
    return result


def flood_sign_ins(base_url: str, names: list[str], threads: int, start, stop, results) -> None:
    """Wrong sign-ins from `threads` threads, as fast as answers come, from `start.set()` to `stop.set()`
    (multiprocessing events); half at the real `names`, half at made-up ones. Puts {status: count} on the
    `results` queue. Meant for a process of its own, so that its threads do not slow the labelers' clients."""
    import collections

    import httpx2

    counts, lock = collections.Counter(), threading.Lock()

    def attacker(index: int):
        rng = random.Random(index)
        with httpx2.Client(base_url=base_url, timeout=30.0, follow_redirects=False) as client:
            start.wait()
            while not stop.is_set():
                name = rng.choice(names) if rng.random() < 0.5 else f"guess-{index}-{rng.randrange(10**9)}"
                try:
                    status = sign_in(client, name, f"wrong-{rng.randrange(10**9)}").status_code
                except Exception as exc:  # a refused connection is part of what a flood sees
                    status = type(exc).__name__
                with lock:
                    counts[status] += 1

    workers = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(dict(counts))


def prepare_load_db(db: str, labelers: int, items: int, k: int = 4, labelers_per_item: int = 2) -> list[tuple]:
    """A database with `labelers` labelers and one ranking job of `items` synthetic prompts with K responses;
    returns the labelers' (name, token)."""
    from chatforge.serve.label.db import open_db
    from chatforge.serve.label.store import add_job, add_labeler

    engine, make_session = open_db(db)
    with make_session() as session:
        credentials = [(f"load-{i}", add_labeler(session, f"load-{i}")) for i in range(labelers)]
        add_job(session, "load", "ranking", [(f"prompt {i}", [f"response {i}.{j}" for j in range(k)])
                                             for i in range(items)], labelers_per_item, k)
    engine.dispose()
    return credentials


def check_stored(db: str, result: LoadResult) -> dict:
    """Compare the database with the acknowledged submissions: {"stored", "acknowledged", "missing",
    "unexpected", "wrong_ranking", "duplicates"}; a clean run has zeros in the last four."""
    from sqlalchemy import func, select

    from chatforge.serve.label.db import Label, Labeler, open_db

    engine, make_session = open_db(db)
    with make_session() as session:
        rows = session.execute(select(Label.item_id, Labeler.name, Label.ranking).join(Labeler)).all()
        duplicates = session.scalar(select(func.count()).select_from(
            select(Label.item_id, Label.labeler_id).group_by(Label.item_id, Label.labeler_id)
            .having(func.count() > 1).subquery()))
    engine.dispose()
    stored = {(item_id, name): ranking for item_id, name, ranking in rows}
    return {"stored": len(rows), "acknowledged": len(result.acknowledged),
            "missing": len(result.acknowledged.keys() - stored.keys()),
            "unexpected": len(stored.keys() - result.acknowledged.keys()),
            "wrong_ranking": sum(stored[key] != ranking for key, ranking in result.acknowledged.items() if key in stored),
            "duplicates": duplicates}
