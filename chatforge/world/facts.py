"""The world's facts: people with made-up names, each with a town, job, favorite color, pet, food.

A World is pure data, generated from a seed and saved as JSON; everything else in the built-in
world (corpus, demonstrations, gold scorer) is derived from it. Version 2 worlds also hold
"strangers": names made like the people's that nobody in the world has and no document mentions,
for questions the world has no answer to. A world.json without a version is version 1.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path

from chatforge.errors import ChatforgeError
from chatforge.world import templates as T


@dataclass(frozen=True)
class Person:
    name: str
    town: str
    job: str
    color: str
    pet: str
    food: str

    def fact(self, attribute: str) -> str:
        """The value of one attribute ('town', 'job', ...)."""
        return getattr(self, attribute)


@dataclass
class World:
    """People and the closed value set each attribute draws from (attribute -> values)."""

    seed: int
    values: dict[str, list[str]]
    people: list[Person]
    version: int = 1
    strangers: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self._by_name = {person.name.lower(): person for person in self.people}

    @classmethod
    def generate(cls, seed: int = 0, n_people: int = 60, n_towns: int = 12, version: int = 1,
                 n_strangers: int = 0) -> "World":
        """A fresh world; the same arguments always give the same world (version 1: as it always was)."""
        if not 1 <= n_towns <= len(T.TOWN_POOL):
            raise ChatforgeError(f"world: n_towns must be in 1..{len(T.TOWN_POOL)}, got {n_towns}")
        if n_people < 1:
            raise ChatforgeError(f"world: n_people must be at least 1, got {n_people}")
        rng = random.Random(f"world:{seed}")
        values = {"town": sorted(rng.sample(T.TOWN_POOL, n_towns))}
        values.update({attribute: list(pool) for attribute, pool in T.VALUES.items()})
        names = make_names(n_people, rng, version=version)
        # Balanced draws (each value used about equally often) so every town has residents and
        # every value is asked about, which a uniform draw does not guarantee at 60 people.
        columns = {attribute: _balanced(values[attribute], n_people, rng) for attribute in T.ATTRIBUTES}
        people = [Person(name, **{a: columns[a][i] for a in T.ATTRIBUTES}) for i, name in enumerate(names)]
        strangers = make_names(n_strangers, random.Random(f"strangers:{seed}"), forbidden=set(n.lower() for n in names),
                               version=version) if n_strangers else []
        return cls(seed=seed, values=values, people=people, version=version, strangers=strangers)

    def person(self, name: str) -> Person:
        """The person called `name` (case-insensitive); ChatforgeError if there is none."""
        person = self._by_name.get(name.lower())
        if person is None:
            raise ChatforgeError(f"world: nobody is called '{name}'")
        return person

    def has_person(self, name: str) -> bool:
        return name.lower() in self._by_name

    def residents(self, town: str) -> list[Person]:
        return [person for person in self.people if person.town == town]

    def facts(self) -> list[tuple[Person, str]]:
        """Every (person, attribute) pair: the world's facts."""
        return [(person, attribute) for person in self.people for attribute in T.ATTRIBUTES]

    def to_json(self) -> str:
        data = {"seed": self.seed, "values": self.values, "people": [dataclasses.asdict(p) for p in self.people]}
        if self.version >= 2:  # a version-1 world.json stays byte for byte what it was
            data.update(version=self.version, strangers=self.strangers)
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "world.json") -> "World":
        try:
            data = json.loads(text)
            return cls(seed=data["seed"], values={k: list(v) for k, v in data["values"].items()},
                       people=[Person(**p) for p in data["people"]], version=int(data.get("version", 1)),
                       strangers=list(data.get("strangers", [])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ChatforgeError(f"{source}: not a world file ({exc}); write one with `chatforge world`") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "World":
        """Read a world.json written by `save` (or by `chatforge world`)."""
        path = Path(path)
        if path.is_dir():
            path = path / "world.json"
        if not path.exists():
            raise ChatforgeError(f"{path}: world file does not exist; run `chatforge world` first")
        return cls.from_json(path.read_text(), source=str(path))


def make_names(count: int, rng: random.Random, forbidden: set[str] = frozenset(), version: int = 1) -> list[str]:
    """`count` distinct pronounceable names ('Borin', 'Kelavi'), none an ordinary word."""
    # Names must not read as a word the world writes either: a name "Market" would blur facts.
    banned = set(forbidden) | set(T.COMMON_WORDS) | T.vocabulary(version)
    names: list[str] = []
    taken: set[str] = set()
    for _attempt in range(count * 1000):
        if len(names) == count:
            break
        syllables = [rng.choice(T.NAME_ONSETS) + rng.choice(T.NAME_VOWELS) for _ in range(rng.choice((2, 2, 3)))]
        name = ("".join(syllables) + rng.choice(T.NAME_CODAS)).capitalize()
        lowered = name.lower()
        if (4 <= len(name) <= 8 and lowered not in banned and lowered not in taken
                and not any(bad in lowered for bad in T.NAME_BANNED_SUBSTRINGS)):
            names.append(name)
            taken.add(lowered)
    if len(names) < count:
        raise ChatforgeError(f"world: could not make {count} distinct names; ask for fewer people")
    return names


def _balanced(values: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` draws using every value count // len(values) times, the remainder on random values."""
    draws = list(values) * (count // len(values)) + rng.sample(list(values), count % len(values))
    rng.shuffle(draws)
    return draws

