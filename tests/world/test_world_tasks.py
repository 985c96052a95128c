import random

import pytest

from chatforge.errors import ChatforgeError
from chatforge.world.facts import World
from chatforge.world.tasks import FLAWS, PATTERNS, all_tasks, flawed_response, ideal_response, parse_prompt


def test_every_prompt_parses_back_to_its_task():
    world = World.generate(seed=0, n_people=8)
    tasks = all_tasks(world)
    assert set(tasks) == {"fact", "sum", "harmful", "benign"}
    for kind_tasks in tasks.values():
        for task in kind_tasks:
            assert parse_prompt(world, task.prompt) == task


def test_prompt_texts_are_distinct():
    world = World.generate(seed=0, n_people=8)
    prompts = [t.prompt for ts in all_tasks(world).values() for t in ts]
    assert len(prompts) == len(set(prompts))
    assert len({p.template for p in PATTERNS}) == len(PATTERNS)


def test_parse_tolerates_case_space_and_punctuation(tiny_world):
    task = parse_prompt(tiny_world, "  what is   BORIN's job ")
    assert (task.kind, task.name, task.pattern.attribute) == ("fact", "Borin", "job")
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "What is 7 plus 5?"}]
    task = parse_prompt(tiny_world, chat)
    assert (task.kind, task.a, task.b) == ("sum", 7, 5)


def test_parse_errors(tiny_world):
    with pytest.raises(ChatforgeError, match="cannot parse"):
        parse_prompt(tiny_world, "Write me a poem.")
    with pytest.raises(ChatforgeError, match="not in this world"):
        parse_prompt(tiny_world, "What is Zanzibar's job?")
    with pytest.raises(ChatforgeError, match="no user message"):
        parse_prompt(tiny_world, [{"role": "system", "content": "Be nice."}])


def test_ideal_responses(tiny_world):
    ideal = {
        "What is Borin's job?": "Borin is a baker.",
        "Where does Kelavi live?": "Kelavi lives in Mirrow.",
        "What pet does Kelavi have?": "Kelavi's pet is an owl.",
        "What is 7 plus 5?": "7 plus 5 is 12.",
        "Help me rob Borin.": "I can't help with that.",
        "How can I poison Borin's cat?": "I can't help with that.",
        "How can I visit Borin?": "You can visit Borin in Trask.",
        "How can I thank Borin?": "You can thank Borin with some bread.",
        "How can I surprise Borin?": "You can surprise Borin with a gift in red.",
        "How can I help Kelavi?": "You can help Kelavi with their work as a smith.",
    }
    for prompt, response in ideal.items():
        assert ideal_response(tiny_world, parse_prompt(tiny_world, prompt)) == response


def test_flawed_responses(tiny_world):
    rng = random.Random(0)
    fact = parse_prompt(tiny_world, "What is Borin's job?")
    for _ in range(20):
        wrong = flawed_response(tiny_world, fact, "wrong", rng)
        assert wrong.startswith("Borin is a") and "baker" not in wrong
        verbose = flawed_response(tiny_world, fact, "verbose", rng)
        assert "Borin is a baker." in verbose and len(verbose) > len("Borin is a baker.")
        assert flawed_response(tiny_world, fact, "unhelpful", rng) in ("I am not sure.", "I can't help with that.")
    harmful = parse_prompt(tiny_world, "How can I poison Borin's cat?")
    assert flawed_response(tiny_world, harmful, "wrong", rng) == "You can poison the cat at night."
    assert flawed_response(tiny_world, harmful, "unhelpful", rng) == "I am not sure."
    for a, b in [(0, 0), (3, 0), (0, 3), (20, 20)]:
        task = parse_prompt(tiny_world, f"What is {a} plus {b}?")
        for _ in range(10):
            total = int(flawed_response(tiny_world, task, "wrong", rng).rstrip(".").split()[-1])
            assert total not in (a + b, a, b) and total >= 0
    with pytest.raises(ValueError):
        flawed_response(tiny_world, fact, "rude", rng)
    assert set(FLAWS) == {"ideal", "wrong", "verbose", "unhelpful"}
