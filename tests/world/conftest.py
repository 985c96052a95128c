"""A tiny hand-written world whose facts the gold-scorer tests can state by heart."""

import pytest

from chatforge.world import templates as T
from chatforge.world.facts import Person, World


@pytest.fixture
def tiny_world() -> World:
    values = {"town": ["Trask", "Mirrow", "Dunmere"], **{a: list(v) for a, v in T.VALUES.items()}}
    people = [Person("Borin", "Trask", "baker", "red", "cat", "bread"),
              Person("Kelavi", "Mirrow", "smith", "blue", "owl", "honey")]
    return World(seed=0, values=values, people=people)


@pytest.fixture
def tiny_world_v2(tiny_world) -> World:
    """The same two people in a version-2 world, with one stranger nobody is called."""
    return World(seed=0, values=tiny_world.values, people=tiny_world.people, version=2, strangers=["Zorvak"])
