"""A raw web "crawl" of the built-in world, with the truth known, for testing the curate stage.

The crawl holds web pages made of the world's documents (2-4 per page, as render.py writes them),
plus what a real crawl has: exact copies (up to case and spacing), near-duplicates (the same page
on another site: its header or footer, a few words changed) and junk (boilerplate menus and
cookie notices, garbled text, keyword spam). A clean reference corpus of the same world, disjoint
from the crawl, stands in for GPT-3's trusted corpora (WebText, books, Wikipedia).

OUT/
  crawl.jsonl       {"text", "id", "url"} in crawl order (duplicates come before or after their original)
  truth.jsonl       {"id", "cluster", "kind", "junk"} line by line with crawl.jsonl; documents of one
                    cluster are copies of one page; kind: page, exact_dup, near_dup, boilerplate, garbled, spam
  reference.jsonl   {"text"} clean pages made like the crawl's, none of their documents in the crawl
  heldout.jsonl     {"text"} clean documents in neither, for measuring a model pretrained on the crawl
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from chatforge.config import opt
from chatforge.errors import ChatforgeError
from chatforge.world import render
from chatforge.world.facts import World

SITES = ("dailyvillage.example", "townnews.example", "folkwiki.example", "readmore.example", "hearthpost.example",
         "lanternblog.example", "marketsquare.example", "oldmill.example")
HEADERS = ("{site} | Home | News | About | Contact", "Welcome to {site}", "{site} - stories from the valley",
           "Menu: Home / Archive / Subscribe", "You are here: Home > Stories")
FOOTERS = ("Posted by {user} on {day} {month}. {n} comments.", "Copyright {year} {site}. All rights reserved.",
           "Share this story with a friend.", "Filed under: people, towns. {n} views.", "Read more on {site}.")
BOILERPLATE = (
    "This website uses cookies to improve your experience", "Accept all cookies", "Manage your preferences",
    "Privacy policy", "Terms of service", "Sign in", "Create an account", "Forgot your password?",
    "Subscribe to our newsletter", "Enter your email address", "Follow us on social media", "Back to top",
    "Skip to main content", "Page not found", "The page you requested could not be found", "Loading",
    "Please enable JavaScript to view this page", "Search this site", "Advertisement", "Sponsored content",
    "Click here to continue", "Your cart is empty", "Free shipping on orders over {n} dollars", "Log out",
    "Related posts", "Most popular", "Trending now", "Previous page", "Next page", "Page {n} of {m}",
    "Contact us", "Help center", "Frequently asked questions", "Cookie settings", "Do not sell my information",
    "All rights reserved", "Powered by a content system", "Sitemap", "Careers", "Press", "Store locator",
    "Download our app", "Rate this article", "Report a problem", "Leave a comment", "Comments are closed",
    "Join {n} readers today", "Last updated {n} minutes ago", "Terms and conditions apply", "Gift cards",
)
SPAM_ITEMS = ("loans", "pills", "watches", "casino bonus", "followers", "diet tea", "crypto coins", "phone cases",
              "cheap flights", "miracle cream", "lottery tips", "replica bags")
SPAM_PHRASES = ("cheap {item}", "best {item} online", "buy {item} now", "{item} discount", "{item} free trial",
                "top {item} deals", "{item} {n} percent off", "order {item} today", "click for {item}")
MONTHS = ("January", "March", "May", "July", "September", "November")
GARBLE_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789#$%&*@~^_=+<>/\\|éüøßñçåœ€¥"
JUNK_KINDS = ("boilerplate", "garbled", "spam")


@dataclass
class CrawlConfig:
    enabled: bool = opt(False, "render the built-in world's crawl into OUTPUT_DIR/crawl/ and curate it")
    seed: int = opt(0, "seed of the world and of the crawl: the same seed and sizes give identical files")
    n_people: int = opt(40, "people in the world the crawl's pages are about")
    n_towns: int = opt(12, "towns in the world")
    pages: int = opt(6000, "distinct pages in the crawl, junk included (copies come on top)")
    junk_share: float = opt(0.2, "share of the pages that are junk: boilerplate, garbled text, keyword spam")
    exact_dup_share: float = opt(0.1, "copies (up to case and spacing) added, as a share of the pages")
    near_dup_share: float = opt(0.15, "near-duplicates of clean pages added, as a share of the pages")
    near_dup_edit_rate: float = opt(0.02, "share of a near-duplicate's words changed (plus its own header and footer)")
    reference_docs: int = opt(3000, "clean pages in reference.jsonl (the quality filter's positives)")
    heldout_docs: int = opt(500, "clean documents in heldout.jsonl, in neither the crawl nor the reference")
    reference_weight: float = opt(0.25, "mixture weight of the reference beside the crawl's 1.0 when the crawl "
                                        "fills the sources (0 = the crawl alone)")

    def validate(self) -> None:
        """Raise ChatforgeError naming the field when a value cannot work."""
        if self.reference_weight < 0:
            raise ChatforgeError(f"curate config: field 'builtin_crawl.reference_weight' must not be negative, "
                                 f"got {self.reference_weight}")
        for field in ("junk_share", "exact_dup_share", "near_dup_share", "near_dup_edit_rate"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ChatforgeError(f"curate config: field 'builtin_crawl.{field}' must be in [0, 1], "
                                     f"got {getattr(self, field)}")
        for field in ("pages", "reference_docs", "heldout_docs", "n_people", "n_towns"):
            if getattr(self, field) < 1:
                raise ChatforgeError(f"curate config: field 'builtin_crawl.{field}' must be at least 1, "
                                     f"got {getattr(self, field)}")


def _fill(template: str, rng: random.Random, site: str = "") -> str:
    return template.format(site=site, user=f"user{rng.randrange(1000)}", day=rng.randint(1, 28),
                           month=rng.choice(MONTHS), year=rng.randint(2001, 2024), n=rng.randint(2, 999),
                           m=rng.randint(2, 99))


def near_duplicate(text: str, rng: random.Random, edit_rate: float) -> str:
    """The page as another site shows it: its own header and footer, and a few words changed."""
    words = text.split(" ")
    for _ in range(max(1, round(len(words) * edit_rate))):
        i = rng.randrange(len(words))
        action = rng.choice(("swap", "drop", "repeat"))
        if action == "swap":
            words[i] = rng.choice(words)
        elif action == "drop" and len(words) > 1:
            del words[i]
        else:
            words.insert(i, words[i])
    site = rng.choice(SITES)
    header, footer = _fill(rng.choice(HEADERS), rng, site), _fill(rng.choice(FOOTERS), rng, site)
    parts = rng.choice(([header, " ".join(words)], [" ".join(words), footer], [header, " ".join(words), footer]))
    return "\n\n".join(parts)


def exact_copy(text: str, rng: random.Random) -> str:
    """The same text up to case and spacing (what normalisation undoes)."""
    change = rng.choice(("lower", "spaces", "trailing"))
    if change == "lower":
        return text.lower()
    if change == "spaces":
        return re.sub(r" ", "  ", text, count=rng.randint(1, 5))
    return text + "\n"


def junk_page(kind: str, rng: random.Random, clean_text: str) -> str:
    """One junk page: `boilerplate` (menus, notices), `garbled` (noise or word salad), `spam` (keywords)."""
    if kind == "boilerplate":
        return "\n".join(_fill(line, rng) for line in rng.sample(BOILERPLATE, rng.randint(8, 16)))
    if kind == "spam":
        return " ".join(_fill(rng.choice(SPAM_PHRASES).replace("{item}", rng.choice(SPAM_ITEMS)), rng)
                        for _ in range(rng.randint(10, 30)))
    if rng.random() < 0.5:  # word salad: the world's own words in random order
        words = clean_text.split()
        rng.shuffle(words)
        return " ".join(words)
    return " ".join("".join(rng.choice(GARBLE_CHARS) for _ in range(rng.randint(2, 10)))
                    for _ in range(rng.randint(30, 120)))


def render_crawl(cfg: CrawlConfig) -> dict[str, list[dict]]:
    """The crawl, its truth, the reference and the held-out documents as lists of records."""
    rng = random.Random(f"{cfg.seed}:crawl")
    world = World.generate(cfg.seed, cfg.n_people, cfg.n_towns)
    split = render.split_prompts(world, random.Random(f"{cfg.seed}:split"), render.DEFAULT_TASK_MIX, 0, 0)
    n_junk = round(cfg.pages * cfg.junk_share)
    n_clean = cfg.pages - n_junk
    # reference pages are made like the crawl's clean pages, so the filter learns clean vs junk, not page shape
    page_sizes = [rng.randint(2, 4) for _ in range(n_clean + cfg.reference_docs)]
    # one call, so no two documents anywhere (crawl, reference, held-out) are the same text
    docs = iter(d["text"] for d in render.corpus_documents(world, sum(page_sizes) + n_junk + cfg.heldout_docs, rng,
                                                           split.train))
    heldout = [next(docs) for _ in range(cfg.heldout_docs)]
    clean_pages = ["\n\n".join(next(docs) for _ in range(size)) for size in page_sizes]
    reference = clean_pages[n_clean:]
    pages = [("page", text) for text in clean_pages[:n_clean]]
    pages += [(kind, junk_page(kind, rng, next(docs))) for kind in render.shuffled_labels(
        n_junk, {k: 1.0 for k in JUNK_KINDS}, rng)]

    entries = [(cluster, kind, text) for cluster, (kind, text) in enumerate(pages)]
    for cluster in rng.sample(range(len(pages)), min(len(pages), round(cfg.pages * cfg.exact_dup_share))):
        entries.append((cluster, "exact_dup", exact_copy(pages[cluster][1], rng)))
    clean_ids = range(n_clean)
    for _ in range(round(cfg.pages * cfg.near_dup_share)):
        cluster = rng.choice(clean_ids)
        entries.append((cluster, "near_dup", near_duplicate(pages[cluster][1], rng, cfg.near_dup_edit_rate)))
    rng.shuffle(entries)

    crawl, truth = [], []
    for doc_id, (cluster, kind, text) in enumerate(entries):
        junk = pages[cluster][0] in JUNK_KINDS
        crawl.append({"text": text, "id": doc_id, "url": f"https://{rng.choice(SITES)}/p/{doc_id}"})
        truth.append({"id": doc_id, "cluster": cluster, "kind": kind, "junk": junk})
    return {"crawl.jsonl": crawl, "truth.jsonl": truth, "reference.jsonl": [{"text": t} for t in reference],
            "heldout.jsonl": [{"text": t} for t in heldout]}


def write_crawl(cfg: CrawlConfig, out: Path) -> dict[str, Path]:
    """Render the crawl into `out` (see the module docstring); return {file name: path}."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, records in render_crawl(cfg).items():
        paths[name] = out / name
        with paths[name].open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return paths
