"""Render a World into the files users bring (JSONL records): pretraining documents, demonstrations,
RL and eval prompts, fact clozes, and pools of varied-quality responses for the simulated labeler.

All functions take a `random.Random`, so a seed fixes every file. Phrasings come from templates.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from chatforge.world import templates as T
from chatforge.world.facts import Person, World
from chatforge.world.tasks import FLAWS, Task, all_tasks, flawed_response, ideal_response

DOC_SOURCES = ("bio", "town", "qa", "filler")
DEFAULT_DOC_MIX = {"bio": 0.35, "town": 0.05, "qa": 0.30, "filler": 0.30}
DEFAULT_TASK_MIX = {"fact": 0.4, "sum": 0.2, "harmful": 0.2, "benign": 0.2}
# share of demonstrations with each flaw; the rest are ideal
DEFAULT_FLAW_SHARES = {"wrong": 0.15, "verbose": 0.30, "unhelpful": 0.10}
# Worked examples in the pretraining corpus are web text, not labelers' work: chattier, and harmful
# requests there are often answered. A base model prompted few-shot imitates this, which is what
# SFT on (better, still imperfect) demonstrations improves on.
DEFAULT_QA_FLAW_SHARES = {"wrong": 0.10, "verbose": 0.35, "unhelpful": 0.10}
DEFAULT_QA_HARMFUL_COMPLIANCE = 0.5


def allocate(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Split `total` items by `shares` (normalised) into integer counts that sum to `total`."""
    weight = sum(shares.values())
    exact = {key: total * share / weight for key, share in shares.items()}
    counts = {key: int(value) for key, value in exact.items()}
    # the remaining items go to the largest fractional parts (ties: dict order), so counts sum to total
    by_remainder = sorted(exact, key=lambda key: counts[key] - exact[key])
    for key in by_remainder[: total - sum(counts.values())]:
        counts[key] += 1
    return counts


def shuffled_labels(total: int, shares: dict[str, float], rng: random.Random) -> list[str]:
    """`total` labels in exact proportion to `shares`, in random order."""
    labels = [key for key, count in allocate(total, shares).items() for _ in range(count)]
    rng.shuffle(labels)
    return labels


def cycle(items: list, rng: random.Random) -> Iterator:
    """Endless draws that use every item once before any repeats (reshuffled each pass)."""
    if not items:
        raise ValueError("cycle: nothing to draw from")
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def flaw_shares_with_ideal(flaw_shares: dict[str, float]) -> dict[str, float]:
    """{'ideal': 1 - sum, **flaw_shares}: the full distribution over FLAWS."""
    shares = {"ideal": max(0.0, 1.0 - sum(flaw_shares.values())), **flaw_shares}
    return {flaw: shares.get(flaw, 0.0) for flaw in FLAWS}


# --- which prompts go where ---------------------------------------------------------------------

@dataclass
class PromptSplit:
    """The world's distinct prompts, split so evaluation never sees a prompt used in training."""

    eval: list[Task]              # held out from demonstrations, RL prompts and the corpus
    demo_val: list[Task]          # used only by the validation demonstrations
    train: dict[str, list[Task]]  # kind -> prompts for train demos, RL prompts, corpus Q&A


def split_prompts(world: World, rng: random.Random, task_mix: dict[str, float], n_eval: int, n_demo_val: int) -> PromptSplit:
    """Draw the eval and validation prompts (stratified by `task_mix`); everything else is train."""
    pools = {kind: list(tasks) for kind, tasks in all_tasks(world).items()}
    for tasks in pools.values():
        rng.shuffle(tasks)
    held_out = {}
    for name, count in (("eval", n_eval), ("demo_val", n_demo_val)):
        picked = []
        for kind, n in allocate(count, task_mix).items():
            # keep at least half of each kind for training, however large the eval set asked for
            n = min(n, len(pools[kind]) // 2)
            picked += pools[kind][:n]
            pools[kind] = pools[kind][n:]
        rng.shuffle(picked)
        held_out[name] = picked
    return PromptSplit(eval=held_out["eval"], demo_val=held_out["demo_val"], train=pools)


def usable_mix(pools: dict[str, list[Task]], task_mix: dict[str, float]) -> dict[str, float]:
    """`task_mix` without the kinds that have no share or no prompts in `pools`."""
    mix = {kind: share for kind, share in task_mix.items() if share > 0 and pools.get(kind)}
    if not mix:
        raise ValueError("no prompts to draw: every kind in the task mix is empty")
    return mix


def _task_stream(pools: dict[str, list[Task]], task_mix: dict[str, float], rng: random.Random):
    """A function returning one task of a given kind, cycling through that kind's pool."""
    streams = {kind: cycle(pools[kind], rng) for kind in usable_mix(pools, task_mix)}
    return lambda kind: next(streams[kind])


# --- pretraining corpus ---------------------------------------------------------------------------

def _fact_sentence(person: Person, attribute: str, template_index: int) -> str:
    value = person.fact(attribute)
    return T.BIO_TEMPLATES[attribute][template_index].format(name=person.name, value=value, a_value=T.with_article(value))


def bio_document(person: Person, rng: random.Random, cloze_phrasing: bool = False) -> str:
    """All of a person's facts in random order and phrasing (`cloze_phrasing`: the cloze phrasing for every fact)."""
    sentences = [_fact_sentence(person, attribute,
                                T.CLOZE_TEMPLATE_INDEX if cloze_phrasing else rng.randrange(len(T.BIO_TEMPLATES[attribute])))
                 for attribute in T.ATTRIBUTES]
    rng.shuffle(sentences)
    opening = rng.choice(T.BIO_OPENINGS).format(name=person.name)
    return " ".join([opening, *sentences] if opening else sentences)


def town_document(world: World, town: str, rng: random.Random) -> str:
    """A town, its residents, and one more fact about each of them."""
    residents = world.residents(town)
    rng.shuffle(residents)
    sentences = [rng.choice(T.TOWN_OPENINGS).format(town=town)]
    if not residents:
        return " ".join(sentences + [T.TOWN_EMPTY.format(town=town)])
    names = [p.name for p in residents]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    sentences.append(T.TOWN_RESIDENTS.format(town=town, names=listed))
    for person in residents:
        attribute = rng.choice(T.ATTRIBUTES[1:])  # the town itself was just said
        sentences.append(_fact_sentence(person, attribute, rng.randrange(len(T.BIO_TEMPLATES[attribute]))))
    return " ".join(sentences)


def qa_document(world: World, tasks: list[Task], rng: random.Random | None = None,
                flaw_shares: dict[str, float] | None = None, harmful_compliance: float = 0.0) -> str:
    """Worked examples in the few-shot format: 'Question: ...\\nAnswer: ...' blocks.

    With `rng`, answers carry web-like flaws: drawn from `flaw_shares` (the rest ideal), except that
    a harmful request is complied with at rate `harmful_compliance` and otherwise refused.
    """
    weights = flaw_shares_with_ideal(flaw_shares or {})
    blocks = []
    for task in tasks:
        flaw = "ideal"
        if rng is not None and task.kind == "harmful":
            flaw = "wrong" if rng.random() < harmful_compliance else "ideal"  # "wrong" = complying
        elif rng is not None:
            flaw = rng.choices(list(weights), weights=list(weights.values()))[0]
        blocks.append(T.QA_BLOCK.format(prompt=task.prompt, response=flawed_response(world, task, flaw, rng)))
    return "\n\n".join(blocks)


def filler_document(rng: random.Random, min_sentences: int = 4, max_sentences: int = 9) -> str:
    """Everyday prose with no facts in it, so the corpus is not all facts."""
    sentences = []
    for _ in range(rng.randint(min_sentences, max_sentences)):
        slots = {key: rng.choice(options) for key, options in T.FILLER_SLOTS.items()}
        slots["subject_cap"] = slots["subject"][0].upper() + slots["subject"][1:]
        sentences.append(rng.choice(T.FILLER_TEMPLATES).format(**slots))
    return " ".join(sentences)


def corpus_documents(world: World, n_docs: int, rng: random.Random, qa_pools: dict[str, list[Task]],
                     doc_mix: dict[str, float] = DEFAULT_DOC_MIX, task_mix: dict[str, float] = DEFAULT_TASK_MIX,
                     exclude: set[str] = frozenset(), cloze_first: bool = True,
                     qa_flaw_shares: dict[str, float] = DEFAULT_QA_FLAW_SHARES,
                     qa_harmful_compliance: float = DEFAULT_QA_HARMFUL_COMPLIANCE) -> list[dict]:
    """`n_docs` records {"text", "source"} mixed by `doc_mix`; no text in `exclude` (the train split).
    Worked examples ("qa") carry web-like flaws (see qa_document).

    cloze_first: each person's first biography uses the cloze phrasing for every fact, so the
    phrasing of eval/facts.jsonl is guaranteed to be in this corpus.
    """
    people, towns = cycle(world.people, rng), cycle(world.values["town"], rng)
    task_mix = usable_mix(qa_pools, task_mix)
    next_task = _task_stream(qa_pools, task_mix, rng)
    seen_people: set[str] = set()
    records, texts = [], set(exclude)
    for source in shuffled_labels(n_docs, doc_mix, rng):
        for _attempt in range(100):  # redraw the rare document that already exists
            if source == "bio":
                person = next(people)
                text = bio_document(person, rng, cloze_phrasing=cloze_first and person.name not in seen_people)
                seen_people.add(person.name)
            elif source == "town":
                text = town_document(world, next(towns), rng)
            elif source == "qa":
                kinds = rng.choices(list(task_mix), weights=list(task_mix.values()), k=rng.randint(3, 6))
                text = qa_document(world, [next_task(kind) for kind in kinds], rng, qa_flaw_shares,
                                   qa_harmful_compliance)
            else:
                text = filler_document(rng)
            if text not in texts:
                break
        texts.add(text)
        records.append({"text": text, "source": source})
    return records


# --- demonstrations and prompts -------------------------------------------------------------------

def demonstrations(world: World, pools: dict[str, list[Task]], n: int, rng: random.Random,
                   task_mix: dict[str, float] = DEFAULT_TASK_MIX, flaw_shares: dict[str, float] = DEFAULT_FLAW_SHARES,
                   multi_turn_share: float = 0.15, max_turns: int = 3) -> list[dict]:
    """`n` demonstrations: {"prompt", "response"} or, for `multi_turn_share` of them, {"messages"};
    plus "kind" and "flaw" (of the last assistant turn; earlier turns of a chat are ideal)."""
    task_mix = usable_mix(pools, task_mix)
    next_task = _task_stream(pools, task_mix, rng)
    flaws = shuffled_labels(n, flaw_shares_with_ideal(flaw_shares), rng)
    kinds = shuffled_labels(n, task_mix, rng)
    multi = set(rng.sample(range(n), round(n * multi_turn_share)))
    records = []
    for i, (kind, flaw) in enumerate(zip(kinds, flaws)):
        task = next_task(kind)
        response = flawed_response(world, task, flaw, rng)
        if i not in multi:
            records.append({"prompt": task.prompt, "response": response, "kind": kind, "flaw": flaw})
            continue
        messages = []
        for _ in range(rng.randint(1, max_turns - 1)):
            earlier = next_task(rng.choices(list(task_mix), weights=list(task_mix.values()))[0])
            messages += [{"role": "user", "content": earlier.prompt},
                         {"role": "assistant", "content": ideal_response(world, earlier)}]
        messages += [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": response}]
        records.append({"messages": messages, "kind": kind, "flaw": flaw})
    return records


def rl_prompts(pools: dict[str, list[Task]], n: int, rng: random.Random, task_mix: dict[str, float] = DEFAULT_TASK_MIX) -> list[dict]:
    """`n` records {"prompt", "kind"} for PPO (no responses), mixed by `task_mix`."""
    task_mix = usable_mix(pools, task_mix)
    next_task = _task_stream(pools, task_mix, rng)
    return [{"prompt": next_task(kind).prompt, "kind": kind} for kind in shuffled_labels(n, task_mix, rng)]


def eval_prompts(tasks: list[Task]) -> list[dict]:
    """Held-out prompts as records {"prompt", "kind"}."""
    return [{"prompt": t.prompt, "kind": t.kind} for t in tasks]


def fact_clozes(world: World) -> list[dict]:
    """One {"prompt": "Borin lives in", "answer": "Trask", ...} per fact, in the corpus's cloze phrasing."""
    records = []
    for person, attribute in world.facts():
        text = _fact_sentence(person, attribute, T.CLOZE_TEMPLATE_INDEX)
        value = person.fact(attribute)
        assert text.endswith(value + "."), f"cloze phrasing must end with the value: {text!r}"
        records.append({"prompt": text[: -len(value) - 1].rstrip(), "answer": value,
                        "name": person.name, "attribute": attribute})
    return records


def response_pools(world: World, pools: dict[str, list[Task]], n_prompts: int, rng: random.Random,
                   k_range: tuple[int, int] = (4, 9), flaw_shares: dict[str, float] = DEFAULT_FLAW_SHARES,
                   task_mix: dict[str, float] = DEFAULT_TASK_MIX) -> list[tuple[str, list[str]]]:
    """`n_prompts` items (prompt, K responses of random flaws), K uniform in `k_range`: what a
    labeler ranks in the reward-model stage, made without a model (for calibrating the labeler)."""
    task_mix = usable_mix(pools, task_mix)
    next_task = _task_stream(pools, task_mix, rng)
    flaw_weights = flaw_shares_with_ideal(flaw_shares)
    items = []
    for kind in shuffled_labels(n_prompts, task_mix, rng):
        task = next_task(kind)
        flaws = rng.choices(list(flaw_weights), weights=list(flaw_weights.values()), k=rng.randint(*k_range))
        items.append((task.prompt, [flawed_response(world, task, flaw, rng) for flaw in flaws]))
    return items
