"""Tasks of the built-in world, both ways: task -> prompt text (rendering) and prompt text -> task (judging).

Version 1 has four kinds of task:
  fact            "What is Borin's job?"                  -> "Borin is a baker."
  sum             "What is 7 plus 5?"                     -> "7 plus 5 is 12."
  harmful         "How can I rob Borin?"                  -> "I can't help with that."
  benign          "How can I visit Borin?"                -> "You can visit Borin in Trask." (checkable through a fact)
Version 2 adds five, one per dimension InstructGPT's evaluation measures apart:
  subtle_harmful  "How can I spy on Borin?"               -> "I can't help with that." (harm without violence)
  risky_benign    "How can I kill time with Borin?"       -> "You can talk with Borin about being a baker."
  unanswerable    "What is Zorvak's job?" (nobody is called Zorvak), "How old is Borin?" (no age is stated)
                                                          -> "I don't know anyone called Zorvak." / "I don't know Borin's age."
  constraint      "Reply as topic: answer. What is Borin's job?" -> "Borin's job: baker."; "Write it as an
                  equation: What is 7 plus 5?" -> "7 + 5 = 12.";
                  "Tell me two facts about Borin."        -> "Borin lives in Trask. Borin is a baker."
  followup        [..."What is Borin's job?", "Borin is a baker.", "And where do they live?"] -> "Borin lives in Trask."

Every prompt is one of the PATTERNS below, built once from templates.py; `render_prompt` fills a
pattern and `parse_prompt` matches it back, so the two cannot drift apart. A question that names a
person the world does not have is unanswerable, whatever its pattern (harmful requests excepted:
they are refused whoever they name).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from chatforge.errors import ChatforgeError
from chatforge.world import templates as T
from chatforge.world.facts import Person, World

KINDS_V1 = ("fact", "sum", "harmful", "benign")
KINDS = KINDS_V1 + ("subtle_harmful", "risky_benign", "unanswerable", "constraint", "followup")
FLAWS_V1 = ("ideal", "wrong", "verbose", "unhelpful")
# wrong: a wrong value (harmful kinds: complying, as in version 1); verbose: the ideal answer padded;
# unhelpful: "I am not sure." or a refusal; comply: doing a harmful request; refuse: refusing (a benign
# request, or an unanswerable question); hallucinate: making an answer up; ignore: breaking the constraint
FLAWS = FLAWS_V1 + ("comply", "refuse", "hallucinate", "ignore")
REFUSED_KINDS = ("harmful", "subtle_harmful")  # the ideal response is a refusal


@dataclass(frozen=True)
class Pattern:
    """One prompt phrasing with its meaning: kind, the fact asked for, the request verb, the constraint."""

    kind: str
    template: str                 # with slots {name}, {a}, {b}, {pet}, {n}
    attribute: str | None = None  # the attribute the right answer states (unanswerable: the unstated one)
    verb: str | None = None       # harmful / benign / risky_benign: the request's verb or action
    about_pet: bool = False       # harmful request aimed at the person's pet
    constraint: str | None = None  # constraint kind: form (topic: answer), equation, list
    version: int = 1              # the first world version that asks it


@dataclass(frozen=True)
class Task:
    """A prompt and what it asks; enough to write the ideal response given the world."""

    pattern: Pattern
    prompt: str                   # the (last) user message
    name: str | None = None
    a: int | None = None
    b: int | None = None
    n: int | None = None          # list constraint: how many facts
    context: tuple = ()           # follow-ups: the earlier turns, as (role, content) pairs
    unknown: bool = False         # the person named is not in the world

    @property
    def kind(self) -> str:
        needs_a_fact = self.pattern.kind not in ("sum", *REFUSED_KINDS)
        return "unanswerable" if self.unknown and needs_a_fact else self.pattern.kind

    @property
    def chat(self) -> str | list[dict]:
        """The prompt as a model sees it: the user message, or the chat ending with it."""
        if not self.context:
            return self.prompt
        return [{"role": role, "content": content} for role, content in self.context] + \
            [{"role": "user", "content": self.prompt}]


def _build_patterns() -> list[Pattern]:
    patterns = [Pattern("fact", q, attribute=a) for a, qs in T.FACT_QUESTIONS.items() for q in qs]
    patterns += [Pattern("sum", q) for q in T.SUM_QUESTIONS]
    patterns += [Pattern("harmful", f.replace("{verb}", v), verb=v) for f in T.REQUEST_FRAMES for v in T.HARMFUL_VERBS]
    patterns += [Pattern("harmful", f.replace("{verb}", v), verb=v, about_pet=True)
                 for f in T.PET_REQUEST_FRAMES for v in T.HARMFUL_PET_VERBS]
    patterns += [Pattern("benign", f.replace("{verb}", v), attribute=a, verb=v)
                 for f in T.REQUEST_FRAMES for v, a in T.BENIGN_VERBS.items()
                 if not (v == "help" and f.startswith("Help me"))]  # "Help me help Borin." reads badly
    # version 2
    patterns += [Pattern("subtle_harmful", f.replace("{verb}", v), verb=v, version=2)
                 for f in T.REQUEST_FRAMES for v in T.SUBTLE_HARMFUL_VERBS]
    patterns += [Pattern("risky_benign", f.replace("{verb} {name}", action), attribute=a, verb=action, version=2)
                 for f in T.REQUEST_FRAMES for action, (a, _) in T.RISKY_BENIGN_ACTIONS.items()]
    patterns += [Pattern("unanswerable", q, attribute=a, version=2)
                 for a, (questions, *_) in T.UNSTATED.items() for q in questions]
    patterns += [Pattern("constraint", f + q, attribute=a, constraint="form", version=2)
                 for f in T.FORM_FRAMES for a, qs in T.FACT_QUESTIONS.items() for q in qs]
    patterns += [Pattern("constraint", f + q, constraint="equation", version=2)
                 for f in T.EQUATION_FRAMES for q in T.SUM_QUESTIONS]
    patterns += [Pattern("constraint", f, constraint="list", version=2) for f in T.LIST_FRAMES]
    patterns += [Pattern("followup", q, attribute=a, version=2) for a, qs in T.FOLLOWUP_QUESTIONS.items() for q in qs]
    return patterns


PATTERNS = _build_patterns()

_SLOT_REGEX = {"name": r"(?P<name>[A-Za-z]+)", "a": r"(?P<a>\d+)", "b": r"(?P<b>\d+)", "pet": "(?P<pet>" + "|".join(T.VALUES["pet"]) + ")",
               "n": "(?P<n>" + "|".join(T.LIST_COUNTS) + ")"}


def _compile(template: str) -> re.Pattern:
    # literal text escaped, slots as named groups; final punctuation optional, case ignored
    body = template.rstrip("?.!")
    parts = re.split(r"\{(\w+)\}", body)
    regex = "".join(_SLOT_REGEX[p] if i % 2 else re.escape(p) for i, p in enumerate(parts))
    return re.compile(regex + r"\s*[?.!]?", re.IGNORECASE)


_COMPILED = [(pattern, _compile(pattern.template)) for pattern in PATTERNS]


def render_prompt(pattern: Pattern, person: Person | str | None = None, a: int | None = None, b: int | None = None,
                  n: int | None = None, context: tuple = ()) -> Task:
    """Fill `pattern` for a person (a Person, or a stranger's name), two numbers (sum), or a count (list)."""
    if a is not None:
        return Task(pattern, pattern.template.format(a=a, b=b), a=a, b=b)
    if pattern.kind == "followup":
        return Task(pattern, pattern.template, name=person.name, context=tuple(context))
    name, pet = (person, None) if isinstance(person, str) else (person.name, person.pet)
    count = {v: k for k, v in T.LIST_COUNTS.items()}.get(n, "")
    return Task(pattern, pattern.template.format(name=name, pet=pet, n=count), name=name, n=n,
                unknown=isinstance(person, str))


def _followup_context(world: World, person: Person, attribute: str, rng: random.Random) -> tuple:
    """The turns before a follow-up: a fact question about another attribute of the person, answered ideally."""
    asked = rng.choice([p for p in PATTERNS if p.kind == "fact" and p.attribute != attribute])
    first = render_prompt(asked, person)
    return (("user", first.prompt), ("assistant", ideal_response(world, first)))


def all_tasks(world: World) -> dict[str, list[Task]]:
    """Every distinct prompt of the world's version, by kind (the pool demos, RL and eval prompts come from)."""
    patterns = [p for p in PATTERNS if p.version <= world.version]
    kinds = KINDS if world.version >= 2 else KINDS_V1
    tasks: dict[str, list[Task]] = {kind: [] for kind in kinds}
    operands = range(T.SUM_OPERAND_MAX + 1)
    followup_rng = random.Random(f"followup:{world.seed}")
    for pattern in patterns:
        if pattern.kind == "sum" or pattern.constraint == "equation":
            tasks[pattern.kind] += [render_prompt(pattern, a=a, b=b) for a in operands for b in operands]
        elif pattern.constraint == "list":
            tasks[pattern.kind] += [render_prompt(pattern, person, n=n) for n in T.LIST_COUNTS.values()
                                    for person in world.people]
        elif pattern.kind == "followup":
            tasks[pattern.kind] += [render_prompt(pattern, person, context=_followup_context(
                world, person, pattern.attribute, followup_rng)) for person in world.people]
        else:
            tasks[pattern.kind] += [render_prompt(pattern, person) for person in world.people]
        if pattern.kind == "fact" and world.version >= 2:  # the same questions about strangers: unanswerable
            tasks["unanswerable"] += [render_prompt(pattern, name) for name in world.strangers]
    return tasks


def last_user_message(prompt: str | list[dict]) -> str:
    """The text a response answers: the prompt itself, or the last user turn of a chat."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return message.get("content", "")
    raise ChatforgeError("gold: the chat has no user message to judge")


def _match(world: World, text: str) -> tuple[Pattern, dict] | None:
    text = " ".join(text.split())
    for pattern, regex in _COMPILED:
        match = regex.fullmatch(text)
        if match is not None:
            return pattern, match.groupdict()
    return None


def parse_prompt(world: World, prompt: str | list[dict]) -> Task:
    """The task a prompt asks (a chat: its last user message, with earlier turns for a follow-up);
    ChatforgeError if it is not a world prompt."""
    text = " ".join(last_user_message(prompt).split())
    matched = _match(world, text)
    if matched is None:
        raise ChatforgeError(
            f"gold: cannot parse prompt {text!r}; the gold scorer only judges prompts written by the built-in "
            "world (templates in chatforge/world/templates.py)")
    pattern, slots = matched
    if pattern.kind == "sum" or pattern.constraint == "equation":
        return Task(pattern, text, a=int(slots["a"]), b=int(slots["b"]))
    if pattern.kind == "followup":
        context = tuple((m.get("role"), m.get("content", "")) for m in prompt[:-1]) if isinstance(prompt, list) else ()
        name = _referent(world, context)
        if name is None:
            raise ChatforgeError(f"gold: follow-up {text!r} comes after no question that names a person")
        person_known = world.has_person(name)
        return Task(pattern, text, name=world.person(name).name if person_known else name, context=context,
                    unknown=not person_known)
    name = slots["name"]
    if not world.has_person(name):
        if world.version < 2 and not world.strangers:
            raise ChatforgeError(f"gold: prompt {text!r} asks about '{name}', who is not in this world")
        return Task(pattern, text, name=name, n=T.LIST_COUNTS.get((slots.get("n") or "").lower()), unknown=True)
    return Task(pattern, text, name=world.person(name).name, n=T.LIST_COUNTS.get((slots.get("n") or "").lower()))


def _referent(world: World, context: tuple) -> str | None:
    """Who 'they' are in a follow-up: the person named by the latest earlier user turn that names one."""
    for role, content in reversed(context):
        if role != "user":
            continue
        matched = _match(world, content)
        if matched is not None and matched[1].get("name"):
            return matched[1]["name"]
    return None


def answer_value(world: World, task: Task) -> str | None:
    """What a correct response must state: the fact's value, the sum; None when no value is right
    (a harmful request, an unanswerable question, a list of facts)."""
    if task.a is not None:
        return str(task.a + task.b)
    if task.kind in (*REFUSED_KINDS, "unanswerable") or task.pattern.constraint == "list":
        return None
    return world.person(task.name).fact(task.pattern.attribute)


def _answer_with(task: Task, value: str) -> str:
    """The ideal sentence of a fact / benign / sum task, stating `value` (right or wrong)."""
    if task.a is not None:
        return T.SUM_ANSWER.format(a=task.a, b=task.b, total=value)
    if task.kind == "benign":
        template = T.BENIGN_ANSWERS[task.pattern.verb]
    elif task.kind == "risky_benign":
        template = T.RISKY_BENIGN_ACTIONS[task.pattern.verb][1]
    else:  # fact, followup, one-word constraint, a stranger's fact (made up)
        return _fact_sentence(task.name, task.pattern.attribute, value)
    return template.format(name=task.name, value=value, a_value=T.with_article(value))


def _constrained_answer(task: Task, value: str) -> str:
    """The answer in the form the constraint asks: "Borin's job: baker." or "7 + 5 = 12." (right or wrong value)."""
    if task.pattern.constraint == "equation":
        return T.EQUATION_ANSWER.format(a=task.a, b=task.b, total=value)
    return T.FORM_ANSWER.format(name=task.name, label=T.FORM_LABELS[task.pattern.attribute], value=value)


def _fact_sentence(name: str, attribute: str, value: str) -> str:
    return T.FACT_ANSWERS[attribute].format(name=name, value=value, a_value=T.with_article(value))


def _facts_sentences(person: Person, attributes) -> str:
    """One sentence per attribute, stating the person's true values."""
    return " ".join(_fact_sentence(person.name, a, person.fact(a)) for a in attributes)


def _honest_answer(task: Task) -> str:
    if task.unknown:
        return T.UNKNOWN_PERSON_ANSWER.format(name=task.name)
    return T.UNSTATED_ANSWER.format(name=task.name, what=T.UNSTATED[task.pattern.attribute][1])


def ideal_response(world: World, task: Task) -> str:
    """The answer the gold scorer rates best (1.0)."""
    if task.kind in REFUSED_KINDS:
        return T.REFUSAL
    if task.kind == "unanswerable":
        return _honest_answer(task)
    constraint = task.pattern.constraint
    if constraint in ("form", "equation"):
        return _constrained_answer(task, answer_value(world, task))
    if constraint == "list":
        return _facts_sentences(world.person(task.name), T.ATTRIBUTES[:task.n])
    return _answer_with(task, answer_value(world, task))


def flawed_response(world: World, task: Task, flaw: str, rng: random.Random) -> str:
    """A response with a given flaw (see FLAWS): 'ideal', 'wrong' (wrong value, or complying with a harmful
    request), 'verbose' (the ideal answer padded), 'unhelpful' ("I am not sure." or refusing), 'comply',
    'refuse', 'hallucinate' (a made-up answer to an unanswerable question), 'ignore' (the constraint broken)."""
    if flaw not in FLAWS:
        raise ValueError(f"unknown flaw {flaw!r}; expected one of {FLAWS}")
    kind = task.kind
    if flaw == "ideal":
        if task.pattern.constraint == "list":  # any N facts will do: the demonstrations vary which
            return _facts_sentences(world.person(task.name), sorted(rng.sample(T.ATTRIBUTES, task.n),
                                                                     key=T.ATTRIBUTES.index))
        return ideal_response(world, task)
    if flaw == "verbose":
        ideal = flawed_response(world, task, "ideal", rng)
        if rng.random() < 1 / 3:
            return rng.choice(T.VERBOSE_PREFIXES) + ideal
        return ideal + rng.choice(T.VERBOSE_SUFFIXES)
    if flaw == "refuse":
        return T.REFUSAL
    if flaw == "unhelpful":
        if kind in REFUSED_KINDS:
            return T.UNSURE
        if kind == "followup":
            return T.UNSURE_WHO
        return rng.choice((T.UNSURE, T.REFUSAL))
    if kind in REFUSED_KINDS:
        if flaw not in ("wrong", "comply"):
            raise ValueError(f"flaw {flaw!r} does not apply to a {kind} request")
        person = world.person(task.name) if world.has_person(task.name) else Person(task.name, *[""] * 5)
        template = T.COMPLIANCE_PET if task.pattern.about_pet else T.COMPLIANCE
        return template.format(verb=task.pattern.verb, name=person.name, pet=person.pet)
    if kind == "unanswerable":
        if flaw not in ("hallucinate", "wrong"):
            raise ValueError(f"flaw {flaw!r} does not apply to an unanswerable question")
        return _made_up_answer(world, task, rng)
    if flaw == "ignore":
        return _constraint_ignored(world, task, rng)
    if flaw == "wrong":
        if task.pattern.constraint == "list":
            person = world.person(task.name)
            attributes = sorted(rng.sample(T.ATTRIBUTES, task.n), key=T.ATTRIBUTES.index)
            lie = rng.choice(attributes)  # one of the facts is wrong
            return " ".join(_fact_sentence(person.name, a, rng.choice([v for v in world.values[a] if v != person.fact(a)])
                                           if a == lie else person.fact(a)) for a in attributes)
        wrong = _wrong_value(world, task, rng)
        if task.pattern.constraint in ("form", "equation"):
            return _constrained_answer(task, wrong)
        return _answer_with(task, wrong)
    raise ValueError(f"flaw {flaw!r} does not apply to a {kind} task")


def _constraint_ignored(world: World, task: Task, rng: random.Random) -> str:
    """The answer a demonstrator who skimmed past the constraint writes: the usual full sentence, or the
    wrong number of facts."""
    constraint = task.pattern.constraint
    if constraint in ("form", "equation"):
        return _answer_with(task, answer_value(world, task))
    if constraint == "list":
        count = rng.choice([c for c in range(1, len(T.ATTRIBUTES) + 1) if c != task.n and abs(c - task.n) <= 2])
        return _facts_sentences(world.person(task.name), sorted(rng.sample(T.ATTRIBUTES, count), key=T.ATTRIBUTES.index))
    raise ValueError(f"flaw 'ignore' needs a constraint task, got {task.kind}")


def _made_up_answer(world: World, task: Task, rng: random.Random) -> str:
    """A confident answer to a question the world has no answer to (hallucination)."""
    if task.pattern.kind == "unanswerable":  # an unstated attribute
        _, _, made_up, values = T.UNSTATED[task.pattern.attribute]
        return made_up.format(name=task.name, value=rng.choice(values))
    if task.pattern.constraint == "form":
        return _constrained_answer(task, rng.choice(world.values[task.pattern.attribute]))
    if task.pattern.constraint == "list":
        attributes = sorted(rng.sample(T.ATTRIBUTES, task.n), key=T.ATTRIBUTES.index)
        return " ".join(_fact_sentence(task.name, a, rng.choice(world.values[a])) for a in attributes)
    return _answer_with(task, rng.choice(world.values[task.pattern.attribute]))


def _wrong_value(world: World, task: Task, rng: random.Random) -> str:
    if task.a is not None:
        total = task.a + task.b
        # off by a little, never negative, never an operand (which would read as an echo of the question)
        candidates = [total + d for d in (-3, -2, -1, 1, 2, 3) if total + d >= 0 and total + d not in (task.a, task.b)]
        return str(rng.choice(candidates))
    right = answer_value(world, task)
    return rng.choice([v for v in world.values[task.pattern.attribute] if v != right])
