"""Write the built-in world: facts, pretraining corpus, demonstrations, prompts, fact clozes, labelers.

Version 2 (the default) tests the three H's: besides facts, sums and harmful / benign requests, it asks
harmful requests with no violence in them, benign requests that look risky, questions it has no answer to,
questions with a constraint on the answer's form, and follow-ups that only earlier turns make answerable;
in four of those kinds most demonstrations show the flaw (docs/world.md). Version 1 is the world as it
was before (`version: 1`, configs/world_v1.yaml), file for file.

OUT_DIR/
  world.json                 the facts (World.load / GoldScorer.from_dir read it back)
  labeler.json               the simulated labelers' noise, calibrated to the target agreement, and leanings
  config.yaml                the config this was written with
  corpus/train.jsonl         {"text", "source"} pretraining documents
  corpus/val.jsonl           held-out documents of the same world (no text shared with train)
  demos/train.jsonl          {"prompt", "response"} or {"messages"}, plus "kind" and "flaw" (tasks.FLAWS)
  demos/val.jsonl            the same, on prompts that train demonstrations never use
  prompts/rl.jsonl           {"prompt", "kind"} for PPO (a follow-up's prompt is its chat: a list of messages)
  prompts/eval.jsonl         {"prompt", "kind"} held out from demos, RL prompts and the corpus
  eval/facts.jsonl           {"prompt": "Borin lives in", "answer": "Trask"} one per fact

Every file is a function of the seed and the sizes: the same config writes identical files.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from chatforge.config import opt, save_config
from chatforge.data.jsonl import write_jsonl
from chatforge.errors import ChatforgeError, where
from chatforge.world import render
from chatforge.world.facts import World
from chatforge.world.gold import GoldScorer
from chatforge.world.labeler import (DEFAULT_LEANINGS, LABELER_FILE, LEANING_FEATURES, calibrate_noise,
                                     expected_panel_agreement, gold_pools, panel_pools)
from chatforge.world.tasks import KINDS, KINDS_V1
from chatforge.world.templates import TOWN_POOL

# which flaws a version-2 behaviour table may give each kind (tasks.flawed_response)
KIND_FLAWS = {kind: ("wrong", "verbose", "unhelpful", "refuse") for kind in ("fact", "sum", "benign", "followup")}
KIND_FLAWS.update(harmful=("comply", "verbose", "unhelpful"), subtle_harmful=("comply", "verbose", "unhelpful"),
                  risky_benign=("refuse", "wrong", "verbose", "unhelpful"),
                  unanswerable=("hallucinate", "verbose", "unhelpful", "refuse"),
                  constraint=("ignore", "wrong", "unhelpful", "refuse"))


@dataclass
class Config:
    seed: int = opt(0, "seed of everything written: the same seed and sizes give identical files")
    out_dir: Path = opt(Path("runs/world"), "folder to write the world's files into")
    version: int = opt(2, "2: the three H's (subtle harm, risky-looking benign requests, unanswerable questions, "
                          "constraints, follow-ups; flawed demonstrations per kind); 1: the original world, file for file")
    n_people: int = opt(40, "people in the world (5 facts each); 40 suits the 1M-parameter demo model")
    n_strangers: int = opt(30, "version 2: names nobody in the world has, asked about in unanswerable questions "
                               "(the last third only in eval prompts)")
    n_towns: int = opt(12, f"towns people live in (at most {len(TOWN_POOL)})")
    train_docs: int = opt(12000, "pretraining documents in corpus/train.jsonl (about 49 words each)")
    val_docs: int = opt(600, "held-out pretraining documents in corpus/val.jsonl")
    doc_mix: dict[str, float] = opt(dict(render.DEFAULT_DOC_MIX),
                                    "share of each document source: bio (biographies), town, qa (worked examples), filler")
    task_mix: dict[str, float] = opt({}, "share of each task kind in demos, prompts and worked examples; empty = the "
                                         f"version's default (version 1: {', '.join(KINDS_V1)})")
    train_demos: int = opt(4000, "demonstrations in demos/train.jsonl")
    val_demos: int = opt(200, "demonstrations in demos/val.jsonl (on prompts train demos do not use)")
    multi_turn_share: float = opt(0.15, "share of (non-follow-up) demonstrations that are multi-turn chats")
    demo_behaviour: dict[str, dict[str, float]] = opt(
        {}, "version 2: kind -> {flaw: share} of its demonstrations (the rest ideal); kinds not named keep the "
            "defaults (chatforge/world/render.py DEFAULT_DEMO_BEHAVIOUR)")
    web_behaviour: dict[str, dict[str, float]] = opt(
        {}, "version 2: the same for the corpus's worked examples, i.e. web text (default DEFAULT_WEB_BEHAVIOUR)")
    wrong_share: float = opt(0.15, "version 1: share of demonstrations with a wrong fact or sum, or complying with a "
                                   "harmful request")
    verbose_share: float = opt(0.30, "version 1: share of demonstrations with a right answer padded with filler")
    unhelpful_share: float = opt(0.10, "version 1: share of demonstrations answering 'I am not sure.' or refusing a "
                                       "benign request")
    qa_wrong_share: float = opt(render.DEFAULT_QA_FLAW_SHARES["wrong"],
                                "version 1: share of the corpus's worked examples (web text) with a wrong fact or sum")
    qa_verbose_share: float = opt(render.DEFAULT_QA_FLAW_SHARES["verbose"],
                                  "version 1: share of the corpus's worked examples padded with chatter")
    qa_unhelpful_share: float = opt(render.DEFAULT_QA_FLAW_SHARES["unhelpful"],
                                    "version 1: share of the corpus's worked examples that do not answer")
    qa_harmful_compliance: float = opt(render.DEFAULT_QA_HARMFUL_COMPLIANCE,
                                       "version 1: share of harmful requests the corpus's worked examples comply with")
    rl_prompts: int = opt(2000, "prompts in prompts/rl.jsonl")
    eval_prompts: int = opt(800, "held-out prompts in prompts/eval.jsonl")
    labeler_agreement: float = opt(0.73, "pairwise agreement between two simulated labelers (InstructGPT: about 0.73)")
    labeler_leanings: list[dict[str, float]] = opt(
        [], "each simulated labeler's taste added to the gold score (labeler i: entry i mod the list's length; "
            f"keys {', '.join(LEANING_FEATURES)}: per word, for refusing, for hedging); empty = the version's default "
            "(version 2: chatforge/world/labeler.py DEFAULT_LEANINGS; version 1: none); [{}] = none")
    calibration_prompts: int = opt(500, "prompts (4-9 varied-quality responses each) the labeler noise is calibrated on")

    def validate(self) -> None:
        """Raise ChatforgeError naming the field when a value cannot work."""
        def fail(field: str, message: str):
            raise ChatforgeError(f"{where('world config', field=field)} {message}")

        if not 1 <= self.n_towns <= len(TOWN_POOL):
            fail("n_towns", f"must be in 1..{len(TOWN_POOL)}, got {self.n_towns}")
        if not 1 <= self.n_people <= 2000:
            fail("n_people", f"must be in 1..2000, got {self.n_people}")
        for field in ("train_docs", "val_docs", "train_demos", "val_demos", "rl_prompts", "eval_prompts", "calibration_prompts"):
            if getattr(self, field) < 0:
                fail(field, f"must not be negative, got {getattr(self, field)}")
        if self.calibration_prompts < 1:
            fail("calibration_prompts", "must be at least 1")
        for field in ("wrong_share", "verbose_share", "unhelpful_share", "multi_turn_share", "qa_wrong_share",
                      "qa_verbose_share", "qa_unhelpful_share", "qa_harmful_compliance"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                fail(field, f"must be in [0, 1], got {getattr(self, field)}")
        flaws = self.wrong_share + self.verbose_share + self.unhelpful_share
        if flaws > 1.0 + 1e-9:
            fail("wrong_share", f"wrong_share + verbose_share + unhelpful_share must be at most 1, got {flaws:g}")
        qa_flaws = self.qa_wrong_share + self.qa_verbose_share + self.qa_unhelpful_share
        if qa_flaws > 1.0 + 1e-9:
            fail("qa_wrong_share", f"qa_wrong_share + qa_verbose_share + qa_unhelpful_share must be at most 1, "
                                   f"got {qa_flaws:g}")
        if self.version not in (1, 2):
            fail("version", f"must be 1 or 2, got {self.version}")
        if self.n_strangers < 0 or (self.version >= 2 and self.n_strangers < 3):
            fail("n_strangers", f"version 2 needs at least 3 (a third are held out for eval), got {self.n_strangers}")
        for field, allowed in (("doc_mix", render.DOC_SOURCES), ("task_mix", self.kinds)):
            mix = getattr(self, field)
            unknown = [key for key in mix if key not in allowed]
            if unknown:
                fail(field, f"unknown key(s) {unknown}; version {self.version} has {list(allowed)}")
            if mix and (any(not isinstance(v, (int, float)) or v < 0 for v in mix.values()) or sum(mix.values()) <= 0):
                fail(field, f"shares must be non-negative numbers with a positive sum, got {mix}")
        if not self.doc_mix:
            fail("doc_mix", "must name at least one document source")
        for field in ("demo_behaviour", "web_behaviour"):
            for kind, shares in getattr(self, field).items():
                if kind not in KINDS:
                    fail(field, f"unknown kind '{kind}'; expected some of {list(KINDS)}")
                if not isinstance(shares, dict):
                    fail(field, f"kind '{kind}': expected a mapping flaw -> share, got {shares!r}")
                bad = [flaw for flaw in shares if flaw not in KIND_FLAWS[kind]]
                if bad:
                    fail(field, f"kind '{kind}': flaw(s) {bad} do not apply; use some of {list(KIND_FLAWS[kind])}")
                if any(not isinstance(v, (int, float)) or v < 0 for v in shares.values()) or sum(shares.values()) > 1 + 1e-9:
                    fail(field, f"kind '{kind}': shares must be non-negative and sum to at most 1, got {shares}")
        for i, leaning in enumerate(self.labeler_leanings):
            if not isinstance(leaning, dict) or any(key not in LEANING_FEATURES for key in leaning):
                fail("labeler_leanings", f"entry {i}: expected a mapping with keys among {list(LEANING_FEATURES)}, "
                                         f"got {leaning!r}")
        if not 0.5 < self.labeler_agreement <= 1.0:
            fail("labeler_agreement", f"must be in (0.5, 1], got {self.labeler_agreement}")

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.version >= 2 else KINDS_V1

    @property
    def mix(self) -> dict[str, float]:
        """The task mix in effect: task_mix, or the version's default."""
        return self.task_mix or (render.DEFAULT_TASK_MIX_V2 if self.version >= 2 else render.DEFAULT_TASK_MIX)

    def behaviour(self, web: bool = False) -> dict[str, dict[str, float]] | None:
        """Version 2: kind -> flaw shares of the demonstrations (or of the web's worked examples); version 1: None."""
        if self.version < 2:
            return None
        defaults = render.DEFAULT_WEB_BEHAVIOUR if web else render.DEFAULT_DEMO_BEHAVIOUR
        return {**defaults, **(self.web_behaviour if web else self.demo_behaviour)}

    @property
    def leanings(self) -> list[dict[str, float]]:
        """The simulated labelers' leanings in effect."""
        return self.labeler_leanings or ([dict(leaning) for leaning in DEFAULT_LEANINGS] if self.version >= 2 else [{}])

    @property
    def flaw_shares(self) -> dict[str, float]:
        return {"wrong": self.wrong_share, "verbose": self.verbose_share, "unhelpful": self.unhelpful_share}

    @property
    def qa_flaw_shares(self) -> dict[str, float]:
        return {"wrong": self.qa_wrong_share, "verbose": self.qa_verbose_share, "unhelpful": self.qa_unhelpful_share}


def run(cfg: Config) -> Path:
    """Generate the world and write all its files into cfg.out_dir; return that folder."""
    cfg.validate()
    out = Path(cfg.out_dir)

    # one random stream per file, so resizing one output leaves the others unchanged
    def rng(stream: str) -> random.Random:
        return random.Random(f"{cfg.seed}:{stream}")

    world = World.generate(cfg.seed, cfg.n_people, cfg.n_towns, cfg.version, cfg.n_strangers if cfg.version >= 2 else 0)
    split = render.split_prompts(world, rng("split"), cfg.mix, cfg.eval_prompts, cfg.val_demos)
    val_pools = {kind: [t for t in split.demo_val if t.kind == kind] for kind in cfg.kinds}

    web_qa = dict(qa_flaw_shares=cfg.qa_flaw_shares, qa_harmful_compliance=cfg.qa_harmful_compliance,
                  qa_behaviour=cfg.behaviour(web=True))
    train_corpus = render.corpus_documents(world, cfg.train_docs, rng("corpus/train"), split.train, cfg.doc_mix,
                                           cfg.mix, **web_qa)
    val_corpus = render.corpus_documents(world, cfg.val_docs, rng("corpus/val"), split.train, cfg.doc_mix, cfg.mix,
                                         exclude={doc["text"] for doc in train_corpus}, cloze_first=False, **web_qa)
    demo_args = dict(task_mix=cfg.mix, flaw_shares=cfg.flaw_shares, multi_turn_share=cfg.multi_turn_share,
                     behaviour=cfg.behaviour())
    files = {
        "corpus/train.jsonl": train_corpus,
        "corpus/val.jsonl": val_corpus,
        "demos/train.jsonl": render.demonstrations(world, split.train, cfg.train_demos, rng("demos/train"), **demo_args),
        "demos/val.jsonl": render.demonstrations(world, val_pools, cfg.val_demos, rng("demos/val"), **demo_args)
        if cfg.val_demos else [],
        "prompts/rl.jsonl": render.rl_prompts(split.train, cfg.rl_prompts, rng("prompts/rl"), cfg.mix),
        "prompts/eval.jsonl": render.eval_prompts(split.eval),
        "eval/facts.jsonl": render.fact_clozes(world),
    }

    # the labelers' noise, calibrated on response pools like those the reward-model stage ranks
    scorer = GoldScorer(world)
    pools = render.response_pools(world, split.train, cfg.calibration_prompts, rng("labeler"),
                                  flaw_shares=cfg.flaw_shares, task_mix=cfg.mix, behaviour=cfg.behaviour())
    scores = gold_pools(scorer, pools)
    panel = panel_pools(scores, [responses for _, responses in pools], cfg.leanings)
    labeler = {"agreement": cfg.labeler_agreement, "noise": calibrate_noise(scores, cfg.labeler_agreement, panel),
               "agreement_at_zero_noise": expected_panel_agreement(panel, 0.0), "calibration_prompts": len(pools)}
    if cfg.version >= 2:
        labeler["leanings"] = cfg.leanings

    out.mkdir(parents=True, exist_ok=True)
    world.save(out / "world.json")
    (out / LABELER_FILE).write_text(json.dumps(labeler, indent=1) + "\n")
    save_config(cfg, out / "config.yaml")
    for name, records in files.items():
        write_jsonl(out / name, records)
    print(summary(world, files, labeler, out))
    return out


def summary(world: World, files: dict[str, list[dict]], labeler: dict, out: Path) -> str:
    """A few lines: what was written, how big, the labeler's noise."""
    lines = [f"world (version {world.version}): {len(world.people)} people, {len(world.facts())} facts, "
             f"{len(world.values['town'])} towns" + (f", {len(world.strangers)} strangers" if world.strangers else "")
             + f" -> {out}"]
    for name, records in files.items():
        line = f"  {name:<20} {len(records):>6} records"
        if name.startswith("corpus/"):
            line += f"  {sum(len(r['text'].split()) for r in records):>9,} words"
        if name.startswith("demos/") and records:
            flaws = Counter(r["flaw"] for r in records)
            multi = sum("messages" in r for r in records)
            line += f"  ({multi} multi-turn; " + ", ".join(f"{f} {flaws[f] / len(records):.0%}" for f in sorted(flaws)) + ")"
        lines.append(line)
    lines.append(f"  labeler: noise {labeler['noise']:.3f} gives agreement {labeler['agreement']:.2f} "
                 f"(at most {labeler['agreement_at_zero_noise']:.2f}, from tied gold scores"
                 + (f" and {len(labeler['leanings'])} labelers' leanings)" if "leanings" in labeler else ")"))
    return "\n".join(lines)
