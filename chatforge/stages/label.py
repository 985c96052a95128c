r"""Human feedback: the labeling app and its admin actions.

    chatforge label add-labeler db=runs/label.db name=admin admin=true     # prints a one-time token
    chatforge label add-labeler db=runs/label.db name=ann
    chatforge label create-job db=runs/label.db name=round1 model=runs/demo/sft/best \
        prompts=runs/demo/world/prompts/rl.jsonl k=4 labelers_per_item=2
    chatforge label serve db=runs/label.db port=8000                       # http://127.0.0.1:8000
    chatforge label export db=runs/label.db out_dir=runs/labels            # comparisons.jsonl, ...

`db` is a SQLite file or any SQLAlchemy URL (postgresql+psycopg://user@host/db, with its driver
installed). create-job samples K responses per prompt from the checkpoint with chatforge's own
engine (duplicates dropped, so an item holds 2..K distinct responses; prompts left with fewer are
skipped) or, with kind=demonstration, queues the prompts for labelers to write responses to.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chatforge.config import opt, require_positive
from chatforge.data.formats import MAX_RESPONSES, MIN_RESPONSES, read_prompts
from chatforge.errors import ChatforgeError


@dataclass
class ServeConfig:
    db: str = opt("runs/label.db", "database: a SQLite file or a SQLAlchemy URL (postgresql+psycopg://...)")
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0 to serve a team; put TLS in front)")
    port: int = opt(8000, "port to listen on")
    max_body_bytes: int = opt(65536, "largest request body accepted; bigger posts get 413")
    max_text_chars: int = opt(20000, "longest demonstration a labeler may write")
    session_hours: float = opt(12.0, "how long a sign-in lasts")
    secret_file: str = opt("", "file of the cookie signing key, made 0600 on first start (empty: beside a SQLite "
                               "database, its path + '.key'); $CHATFORGE_LABEL_SECRET overrides it")
    secure_cookies: bool = opt(False, "mark cookies Secure even on plain HTTP requests (they are anyway over "
                                      "HTTPS, direct or as a trusted proxy says)")
    trusted_proxies: str = opt("", "comma-separated IPs or networks of reverse proxies whose X-Forwarded-Proto and "
                                   "X-Forwarded-For are believed (empty: none)")
    assignment_minutes: float = opt(30.0, "an item still unlabeled this long after it was handed out goes back "
                                          "to the pool; a late submit of it is refused (410)")
    signin_failures_per_account: int = opt(5, "failed sign-ins for one name within signin_window_minutes, "
                                              "then its sign-ins get 429 until the oldest leaves the window")
    signin_failures_per_client: int = opt(20, "failed sign-ins from one address within signin_window_minutes, "
                                              "then its sign-ins get 429 until the oldest leaves the window")
    signin_window_minutes: float = opt(15.0, "the window the failed sign-ins are counted in")
    signin_refusal_seconds: float = opt(1.0, "a refused sign-in (429) is answered this late, so a flood that waits "
                                             "for its answers is held to one try per second per connection")
    signin_tracked_keys: int = opt(10000, "most names and addresses whose failures are kept in memory (the least "
                                          "recently failed are forgotten first)")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = opt("FULL", "FULL: each commit synced to disk, labels survive "
                                                                "a power cut; NORMAL: faster, survives a crash of "
                                                                "the app only")

    def validate(self):
        require_positive(self, "label serve", ("port", "max_body_bytes", "max_text_chars",
                                               "signin_failures_per_account", "signin_failures_per_client",
                                               "signin_tracked_keys"))
        for name in ("session_hours", "assignment_minutes", "signin_window_minutes"):
            if getattr(self, name) <= 0:
                raise ChatforgeError(f"label serve: field '{name}' must be > 0, got {getattr(self, name)}")
        if self.signin_refusal_seconds < 0:
            raise ChatforgeError(f"label serve: field 'signin_refusal_seconds' must be >= 0, got "
                                 f"{self.signin_refusal_seconds}")


@dataclass
class CreateJobConfig:
    db: str = opt("runs/label.db", "database: a SQLite file or a SQLAlchemy URL")
    name: str = opt("", "the job's name (unique), e.g. round1")
    kind: Literal["ranking", "demonstration"] = opt("ranking", "ranking: rank K sampled responses; "
                                                    "demonstration: write a response to each prompt")
    prompts: str = opt("", 'JSONL prompts file, one {"prompt": text or [messages]} per line')
    max_prompts: int = opt(0, "use the first N prompts (0 = all)")
    model: str = opt("", "checkpoint to sample the responses from (ranking jobs)")
    k: int = opt(4, f"responses sampled per prompt ({MIN_RESPONSES}..{MAX_RESPONSES})")
    labelers_per_item: int = opt(1, "labelers each item goes to (2+ measures agreement)")
    max_new_tokens: int = opt(64, "most tokens per sampled response")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "nucleus sampling (1.0 = off)")
    seed: int = opt(0, "sampling seed")
    batch_size: int = opt(32, "prompts decoded together")
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, ...")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")

    def validate(self):
        if not self.name:
            raise ChatforgeError("label create-job: field 'name' is empty; name the job, e.g. name=round1")
        if not self.prompts or not Path(self.prompts).is_file():
            raise ChatforgeError(f"label create-job: field 'prompts': {self.prompts!r} is not a file; give a "
                                 'JSONL file of {"prompt": ...} lines')
        require_positive(self, "label create-job", ("labelers_per_item", "max_new_tokens", "batch_size"))
        if self.kind == "ranking":
            from chatforge.models.io import check_model_dir

            if not self.model:
                raise ChatforgeError("label create-job: field 'model' is empty; a ranking job samples its "
                                     "responses from a checkpoint (or use kind=demonstration)")
            check_model_dir(self.model)
            if not MIN_RESPONSES <= self.k <= MAX_RESPONSES:
                raise ChatforgeError(f"label create-job: field 'k' must be {MIN_RESPONSES}..{MAX_RESPONSES}, "
                                     f"got {self.k}")


@dataclass
class AddLabelerConfig:
    db: str = opt("runs/label.db", "database: a SQLite file or a SQLAlchemy URL")
    name: str = opt("", "the labeler's sign-in name (letters, digits, - _ . @)")
    admin: bool | None = opt(None, "may open the admin pages (empty: false for a new labeler, kept on reset)")
    held_out: bool | None = opt(None, "a held-out labeler: their labels are exported apart, never for training "
                                      "(empty: false for a new labeler, kept on reset)")
    reset: bool = opt(False, "the labeler exists: give them a new token (the old one stops working); admin and "
                             "held_out stay as they are unless given")

    def validate(self):
        if not self.name:
            raise ChatforgeError("label add-labeler: field 'name' is empty; e.g. name=ann")


@dataclass
class ExportConfig:
    db: str = opt("runs/label.db", "database: a SQLite file or a SQLAlchemy URL")
    out_dir: str = opt("runs/labels", "folder for comparisons.jsonl, demonstrations.jsonl, export.json")
    job: str = opt("", "export only this job (empty = all jobs)")

    def validate(self):
        pass


def serve(cfg: ServeConfig) -> None:
    """Run the labeling app until interrupted."""
    import uvicorn

    from chatforge.serve.label.app import create_app

    app = create_app(**dataclasses.asdict(cfg))
    print(f"label: serving {cfg.db} at http://{cfg.host}:{cfg.port} (Ctrl-C stops)", flush=True)
    # proxy headers are the app's to trust (trusted_proxies); uvicorn's own default trusts any local process
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", proxy_headers=False)


def create_job(cfg: CreateJobConfig) -> int:
    """Sample the job's items (or queue its prompts) and store them; returns the job id."""
    from chatforge.serve.label.db import open_db
    from chatforge.serve.label.store import add_job

    prompts = [prompt for prompt, _ in read_prompts(cfg.prompts)]
    if cfg.max_prompts > 0:
        prompts = prompts[:cfg.max_prompts]
    _, make_session = open_db(cfg.db)
    if cfg.kind == "demonstration":
        items, source = [(prompt, []) for prompt in prompts], {"prompts": cfg.prompts}
    else:
        items, source = _sample_items(cfg, prompts), {
            "model": cfg.model, "prompts": cfg.prompts, "k": cfg.k, "temperature": cfg.temperature,
            "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}
    with make_session() as session:
        job = add_job(session, cfg.name, cfg.kind, items, cfg.labelers_per_item, cfg.k if cfg.kind == "ranking" else 0,
                      source)
        job_id = job.id
    skipped = len(prompts) - len(items)
    print(f"label: job {cfg.name!r} (id {job_id}): {len(items)} items queued, each for {cfg.labelers_per_item} "
          f"labeler(s)" + (f"; {skipped} prompts skipped (fewer than 2 distinct responses)" if skipped else ""))
    return job_id


def _sample_items(cfg: CreateJobConfig, prompts: list) -> list[tuple]:
    import torch

    from chatforge.generation import SamplingParams
    from chatforge.models.io import load_causal_lm
    from chatforge.models.templates import load_chat_tokenizer
    from chatforge.runtime import resolve_device, set_threads
    from chatforge.eval.answers import sample_pools

    set_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    model = load_causal_lm(cfg.model, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, device=device)
    tokenizer = load_chat_tokenizer(cfg.model)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                            top_p=cfg.top_p, seed=cfg.seed)
    print(f"label: sampling {cfg.k} responses for each of {len(prompts)} prompts from {cfg.model}", flush=True)
    return sample_pools(model, tokenizer, prompts, cfg.k, params, cfg.batch_size)


def add_labeler(cfg: AddLabelerConfig) -> str:
    """Add the labeler and print their token (stored only as a hash, so shown this once)."""
    from sqlalchemy import select

    from chatforge.serve.label.db import Labeler, open_db
    from chatforge.serve.label.store import add_labeler as store_labeler

    _, make_session = open_db(cfg.db)
    with make_session() as session:
        token = store_labeler(session, cfg.name, cfg.admin, cfg.held_out, cfg.reset)
        labeler = session.scalar(select(Labeler).where(Labeler.name == cfg.name))
    role = "admin" if labeler.is_admin else "held-out labeler" if labeler.held_out else "labeler"
    print(f"label: {role} {cfg.name!r} {'given a new token' if cfg.reset else 'added'}; sign-in token "
          f"(shown once):\n{token}")
    return token


def export(cfg: ExportConfig) -> dict:
    """Write the labels as training files; print what went where."""
    from chatforge.serve.label.db import open_db
    from chatforge.serve.label.export import export_labels

    _, make_session = open_db(cfg.db)
    with make_session() as session:
        summary = export_labels(session, cfg.out_dir, cfg.job)
    for name, info in summary["files"].items():
        print(f"label: {info['records']:>6} {name:<24} -> {info['path']}")
    if not any(info["records"] for info in summary["files"].values()):
        print("label: no rankings or demonstrations to export yet (the files are written empty)")
    if summary["holdout_labelers"]:
        print(f"label: held-out labelers {summary['holdout_labelers']}: their labels are in the *_heldout files; "
              "train the RM on comparisons.jsonl and pass comparisons_heldout.jsonl too with "
              f"holdout_labelers={summary['holdout_labelers']} to evaluate on them apart")
    print(f"label: summary -> {Path(cfg.out_dir) / 'export.json'}")
    return summary


# `chatforge label ACTION ...`: each action is a config class, its entry point and a line of help
ACTIONS = {
    "serve": (ServeConfig, serve, "run the labeling web app"),
    "create-job": (CreateJobConfig, create_job, "sample K responses per prompt from a checkpoint and queue them"),
    "add-labeler": (AddLabelerConfig, add_labeler, "add a labeler (or admin) and print their one-time token"),
    "export": (ExportConfig, export, "write comparisons / demonstrations JSONL for the SFT and RM stages"),
}
