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
from chatforge.world.tasks import FLAWS, FLAWS_V1, Task, all_tasks, flawed_response, ideal_response

DOC_SOURCES = ("bio", "town", "qa", "filler")
DEFAULT_DOC_MIX = {"bio": 0.35, "town": 0.05, "qa": 0.30, "filler": 0.30}
DEFAULT_TASK_MIX = {"fact": 0.4, "sum": 0.2, "harmful": 0.2, "benign": 0.2}  # version 1
# share of demonstrations with each flaw; the rest are ideal
DEFAULT_FLAW_SHARES = {"wrong": 0.15, "verbose": 0.30, "unhelpful": 0.10}
# Worked examples in the pretraining corpus are web text, not labelers' work: chattier, and harmful
# requests there are often answered. A base model prompted few-shot imitates this, which is what
# SFT on (better, still imperfect) demonstrations improves on.
DEFAULT_QA_FLAW_SHARES = {"wrong": 0.10, "verbose": 0.35, "unhelpful": 0.10}
DEFAULT_QA_HARMFUL_COMPLIANCE = 0.5

# Version 2 (docs/world.md says why each rate). Half the prompts are of the four kinds where the
# most frequent demonstration is NOT the preferred answer: hurried demonstrators miss harm that has no
# violence in it, refuse what merely sounds risky, answer questions nobody could answer, and skim past
# the constraint; the labelers' rankings follow the gold judge, so preferences carry what demos lack.
DEFAULT_TASK_MIX_V2 = {"fact": 0.14, "sum": 0.08, "harmful": 0.10, "benign": 0.08, "subtle_harmful": 0.10,
                       "risky_benign": 0.12, "unanswerable": 0.14, "constraint": 0.14, "followup": 0.10}
_PLAIN = {"wrong": 0.10, "verbose": 0.25, "unhelpful": 0.10}
DEFAULT_DEMO_BEHAVIOUR = {  # kind -> share of its demonstrations with each flaw (the rest ideal)
    "fact": dict(_PLAIN), "sum": dict(_PLAIN), "benign": dict(_PLAIN), "followup": dict(_PLAIN),
    "harmful": {"comply": 0.10, "verbose": 0.25, "unhelpful": 0.05},
    "subtle_harmful": {"comply": 0.65, "verbose": 0.05, "unhelpful": 0.05},
    "risky_benign": {"refuse": 0.65, "wrong": 0.05, "verbose": 0.05},
    "unanswerable": {"hallucinate": 0.65, "verbose": 0.05, "refuse": 0.05},
    "constraint": {"ignore": 0.65, "wrong": 0.05},
}
_WEB_PLAIN = {"wrong": 0.10, "verbose": 0.35, "unhelpful": 0.10}
DEFAULT_WEB_BEHAVIOUR = {  # the corpus's worked examples (web text): worse than the demonstrations everywhere
    "fact": dict(_WEB_PLAIN), "sum": dict(_WEB_PLAIN), "benign": dict(_WEB_PLAIN), "followup": dict(_WEB_PLAIN),
    "harmful": {"comply": 0.50}, "subtle_harmful": {"comply": 0.80},
    "risky_benign": {"refuse": 0.30, "wrong": 0.10, "verbose": 0.30},
    "unanswerable": {"hallucinate": 0.85}, "constraint": {"ignore": 0.80, "wrong": 0.10},
}


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
    """{'ideal': 1 - sum, **flaw_shares}: the full distribution over version 1's FLAWS and any others named."""
    shares = {"ideal": max(0.0, 1.0 - sum(flaw_shares.values())), **flaw_shares}
    return {flaw: shares.get(flaw, 0.0) for flaw in FLAWS if flaw in FLAWS_V1 or flaw in shares}


# --- which prompts go where ---------------------------------------------------------------------

@dataclass
class PromptSplit:
    """The world's distinct prompts, split so evaluation never sees a prompt used in training."""

    eval: list[Task]              # held out from demonstrations, RL prompts and the corpus
    demo_val: list[Task]          # used only by the validation demonstrations
    train: dict[str, list[Task]]  # kind -> prompts for train demos, RL prompts, corpus Q&A


def held_out_strangers(world: World) -> set[str]:
    """The strangers only evaluation asks about (the last third): a model must say it does not know people
    it was never trained to say that of."""
    return set(world.strangers[len(world.strangers) * 2 // 3:])


def split_prompts(world: World, rng: random.Random, task_mix: dict[str, float], n_eval: int, n_demo_val: int) -> PromptSplit:
    """Draw the eval and validation prompts (stratified by `task_mix`); everything else is train.
    Questions about the held-out strangers are never train; about the other strangers, only train."""
    pools = {kind: list(tasks) for kind, tasks in all_tasks(world).items()}
    for tasks in pools.values():
        rng.shuffle(tasks)
    unseen = held_out_strangers(world)

    def train_only(task: Task) -> bool:
        return task.unknown and task.name not in unseen

    held_out = {}
    for name, count in (("eval", n_eval), ("demo_val", n_demo_val)):
        picked = []
        for kind, n in allocate(count, task_mix).items():
            # keep at least half of each kind for training, however large the eval set asked for
            n = min(n, len(pools[kind]) // 2)
            chosen = [task for task in pools[kind] if not train_only(task)][:n]
            picked += chosen
            chosen_set = set(chosen)
            pools[kind] = [task for task in pools[kind] if task not in chosen_set]
        rng.shuffle(picked)
        held_out[name] = picked
    train = {kind: [task for task in tasks if not (task.unknown and task.name in unseen)] for kind, tasks in pools.items()}
    return PromptSplit(eval=held_out["eval"], demo_val=held_out["demo_val"], train=train)


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
                flaw_shares: dict[str, float] | None = None, harmful_compliance: float = 0.0,
                behaviour: dict[str, dict[str, float]] | None = None) -> str:
    """Worked examples in the few-shot format: 'Question: ...\\nAnswer: ...' blocks.

    With `rng`, answers carry web-like flaws: with `behaviour` (version 2), drawn from the task kind's
    shares; else (version 1) from `flaw_shares` (the rest ideal), except that a harmful request is
    complied with at rate `harmful_compliance` and otherwise refused. A follow-up comes after its context.
    """
    weights = flaw_shares_with_ideal(flaw_shares or {})
    blocks = []
    for task in tasks:
        flaw = "ideal"
        if rng is not None and behaviour is not None:
            flaw = draw(flaw_shares_with_ideal(behaviour.get(task.kind, {})), rng)
        elif rng is not None and task.kind == "harmful":
            flaw = "wrong" if rng.random() < harmful_compliance else "ideal"  # "wrong" = complying
        elif rng is not None:
            flaw = rng.choices(list(weights), weights=list(weights.values()))[0]
        blocks += [T.QA_BLOCK.format(prompt=question, response=answer) for question, answer in _pairs(task.context)]
        blocks.append(T.QA_BLOCK.format(prompt=task.prompt, response=flawed_response(world, task, flaw, rng)))
    return "\n\n".join(blocks)


def draw(weights: dict[str, float], rng: random.Random) -> str:
    """One key of `weights`, drawn in proportion to its weight."""
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _pairs(context: tuple) -> list[tuple[str, str]]:
    """(user, assistant) message pairs of a follow-up's earlier turns."""
    return [(context[i][1], context[i + 1][1]) for i in range(0, len(context) - 1, 2)]


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
                     qa_harmful_compliance: float = DEFAULT_QA_HARMFUL_COMPLIANCE,
                     qa_behaviour: dict[str, dict[str, float]] | None = None) -> list[dict]:
    """`n_docs` records {"text", "source"} mixed by `doc_mix`; no text in `exclude` (the train split).
    Worked examples ("qa") carry web-like flaws (see qa_document); they never ask about strangers, whom
    no document mentions.

    cloze_first: each person's first biography uses the cloze phrasing for every fact, so the
    phrasing of eval/facts.jsonl is guaranteed to be in this corpus.
    """
    people, towns = cycle(world.people, rng), cycle(world.values["town"], rng)
    qa_pools = {kind: [task for task in tasks if not task.unknown] for kind, tasks in qa_pools.items()}
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
                                   qa_harmful_compliance, qa_behaviour)
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
                   multi_turn_share: float = 0.15, max_turns: int = 3,
                   behaviour: dict[str, dict[str, float]] | None = None) -> list[dict]:
    """`n` demonstrations: {"prompt", "response"} or, for follow-ups and `multi_turn_share` of the others,
    {"messages"}; plus "kind" and "flaw" (of the last assistant turn). Flaws come from `behaviour` (version 2:
    kind -> flaw shares; the same demonstrators wrote a chat's earlier turns, so those are drawn from their
    kinds' shares too) or, in version 1, from `flaw_shares` (earlier turns ideal)."""
    task_mix = usable_mix(pools, task_mix)
    next_task = _task_stream(pools, task_mix, rng)
    if behaviour is None:
        flaws = shuffled_labels(n, flaw_shares_with_ideal(flaw_shares), rng)
        kinds = shuffled_labels(n, task_mix, rng)
    else:  # exact shares within each kind
        kinds = shuffled_labels(n, task_mix, rng)
        by_kind = {kind: iter(shuffled_labels(kinds.count(kind), flaw_shares_with_ideal(behaviour.get(kind, {})), rng))
                   for kind in task_mix}
        flaws = [next(by_kind[kind]) for kind in kinds]
    multi = set(rng.sample(range(n), round(n * multi_turn_share)))
    records = []
    for i, (kind, flaw) in enumerate(zip(kinds, flaws)):
        task = next_task(kind)
        response = flawed_response(world, task, flaw, rng)
        if task.context:
            records.append({"messages": [*task.chat, {"role": "assistant", "content": response}], "kind": kind,
                            "flaw": flaw})
            continue
        if i not in multi:
            records.append({"prompt": task.prompt, "response": response, "kind": kind, "flaw": flaw})
            continue
        messages = []
        for _ in range(rng.randint(1, max_turns - 1)):
            earlier = next_task(rng.choices(list(task_mix), weights=list(task_mix.values()))[0])
            earlier_response = ideal_response(world, earlier) if behaviour is None else \
                flawed_response(world, earlier, draw(flaw_shares_with_ideal(behaviour.get(earlier.kind, {})), rng), rng)
            if earlier.context:  # a follow-up keeps its own context, so it never dangles
                messages += task_messages(earlier.chat, earlier_response)
                continue
            messages += [{"role": "user", "content": earlier.prompt},
                         {"role": "assistant", "content": earlier_response}]
        messages += [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": response}]
        records.append({"messages": messages, "kind": kind, "flaw": flaw})
    return records


def task_messages(chat: str | list[dict], response: str) -> list[dict]:
    """A prompt (a user message or a chat) and its response as chat messages."""
    messages = [{"role": "user", "content": chat}] if isinstance(chat, str) else list(chat)
    return messages + [{"role": "assistant", "content": response}]


def rl_prompts(pools: dict[str, list[Task]], n: int, rng: random.Random, task_mix: dict[str, float] = DEFAULT_TASK_MIX) -> list[dict]:
    """`n` records {"prompt", "kind"} for PPO (no responses), mixed by `task_mix`."""
    task_mix = usable_mix(pools, task_mix)
    next_task = _task_stream(pools, task_mix, rng)
    return [{"prompt": next_task(kind).chat, "kind": kind} for kind in shuffled_labels(n, task_mix, rng)]


def eval_prompts(tasks: list[Task]) -> list[dict]:
    """Held-out prompts as records {"prompt", "kind"}."""
    return [{"prompt": t.chat, "kind": t.kind} for t in tasks]


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
                   task_mix: dict[str, float] = DEFAULT_TASK_MIX,
                   behaviour: dict[str, dict[str, float]] | None = None) -> list[tuple]:
    """`n_prompts` items (prompt, K responses of random flaws), K uniform in `k_range`: what a
    labeler ranks in the reward-model stage, made without a model (for calibrating the labeler).
    Flaws are drawn as the demonstrations' are (`behaviour` per kind in version 2)."""
    task_mix = usable_mix(pools, task_mix)
    next_task = _task_stream(pools, task_mix, rng)
    items = []
    for kind in shuffled_labels(n_prompts, task_mix, rng):
        task = next_task(kind)
        flaw_weights = flaw_shares_with_ideal(flaw_shares if behaviour is None else behaviour.get(kind, {}))
        flaws = rng.choices(list(flaw_weights), weights=list(flaw_weights.values()), k=rng.randint(*k_range))
        items.append((task.chat, [flawed_response(world, task, flaw, rng) for flaw in flaws]))
    return items
