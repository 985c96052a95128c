import random

import pytest

from chatforge.errors import ChatforgeError
from chatforge.world import templates as T
from chatforge.world.facts import World, make_names


def test_generate_is_deterministic_and_well_formed():
    world = World.generate(seed=3)
    assert world.to_json() == World.generate(seed=3).to_json()
    assert world.to_json() != World.generate(seed=4).to_json()
    assert len(world.people) == 60 and len(world.facts()) == 300
    assert len(world.values["town"]) == 12
    for person in world.people:
        for attribute in T.ATTRIBUTES:
            assert person.fact(attribute) in world.values[attribute]
    # balanced draws: every value of every attribute is used
    for attribute in T.ATTRIBUTES:
        assert {p.fact(attribute) for p in world.people} == set(world.values[attribute])


def test_names_are_unique_single_words_and_not_ordinary_words():
    world = World.generate(seed=0, n_people=200)
    names = [p.name for p in world.people]
    assert len({n.lower() for n in names}) == len(names)
    banned = T.vocabulary() | T.COMMON_WORDS
    for name in names:
        assert name.isalpha() and name[0].isupper() and name[1:].islower()
        assert name.lower() not in banned
        assert not any(bad in name.lower() for bad in T.NAME_BANNED_SUBSTRINGS)


def test_make_names_avoids_forbidden():
    names = make_names(50, random.Random(0), forbidden={"borin"})
    assert "Borin" not in names and len(set(names)) == 50


def test_json_round_trip(tmp_path):
    world = World.generate(seed=1, n_people=10, n_towns=4)
    world.save(tmp_path / "world.json")
    again = World.load(tmp_path)  # a folder works too
    assert again.to_json() == world.to_json()
    assert again.person(world.people[0].name.upper()) == world.people[0]


def test_errors_are_chatforge_errors(tmp_path):
    with pytest.raises(ChatforgeError, match="does not exist"):
        World.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ChatforgeError, match="not a world file"):
        World.load(tmp_path / "bad.json")
    with pytest.raises(ChatforgeError, match="nobody is called"):
        World.generate(seed=0, n_people=3).person("Nobody")
    with pytest.raises(ChatforgeError, match="n_towns"):
        World.generate(n_towns=99)
