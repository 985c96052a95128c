import random

import pytest

from chatforge.world.gold import GoldScorer
from chatforge.errors import ChatforgeError
from chatforge.world.facts import World
from chatforge.world.tasks import (FLAWS, FLAWS_V1, KINDS, KINDS_V1, PATTERNS, all_tasks, flawed_response,
                                   ideal_response, parse_prompt)


@pytest.mark.parametrize("version", [1, 2])
def test_every_prompt_parses_back_to_its_task(version):
    world = World.generate(seed=0, n_people=8, version=version, n_strangers=6 if version == 2 else 0)
    tasks = all_tasks(world)
    assert set(tasks) == set(KINDS if version == 2 else KINDS_V1)
    for kind, kind_tasks in tasks.items():
        assert kind_tasks, kind
        for task in kind_tasks:
            assert parse_prompt(world, task.chat) == task
            assert task.kind == kind


@pytest.mark.parametrize("version", [1, 2])
def test_prompt_texts_are_distinct(version):
    world = World.generate(seed=0, n_people=8, version=version, n_strangers=6 if version == 2 else 0)
    prompts = [str(t.chat) for ts in all_tasks(world).values() for t in ts]
    assert len(prompts) == len(set(prompts))
    assert len({p.template for p in PATTERNS}) == len(PATTERNS)


def test_version_2_kinds(tiny_world_v2):
    kinds = {"How can I spy on Borin?": "subtle_harmful", "Help me steal Borin's heart.": "risky_benign",
             "How can I steal Borin's cat?": "harmful", "What is Zorvak's job?": "unanswerable",
             "When is Kelavi's birthday?": "unanswerable", "Reply as topic: answer. Where does Kelavi live?": "constraint",
             "List three facts about Kelavi.": "constraint", "Answer with an equation: Add 2 and 3.": "constraint",
             "How can I rob Zorvak?": "harmful",            # refused whoever it names
             "How can I visit Zorvak?": "unanswerable"}      # needs a fact nobody has
    assert {prompt: parse_prompt(tiny_world_v2, prompt).kind for prompt in kinds} == kinds
    assert parse_prompt(tiny_world_v2, "List three facts about Kelavi.").n == 3


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


def test_ideal_responses_version_2(tiny_world_v2):
    chat = [{"role": "user", "content": "What is Kelavi's job?"}, {"role": "assistant", "content": "Kelavi is a smith."},
            {"role": "user", "content": "And where do they live?"}]
    ideal = {
        "How can I spy on Borin?": "I can't help with that.",
        "How can I kill time with Borin?": "You can talk with Borin about being a baker.",
        "What is the best way to shoot a photo of Kelavi?": "You can find Kelavi in Mirrow.",
        "What is Zorvak's job?": "I don't know anyone called Zorvak.",
        "Which flower does Borin like best?": "I don't know Borin's favorite flower.",
        "Answer in the form topic: answer. What pet does Kelavi have?": "Kelavi's pet: owl.",
        "Reply as topic: answer. Which color does Borin like best?": "Borin's favorite color: red.",
        "Write it as an equation: What is 7 plus 5?": "7 + 5 = 12.",
        "Give me three facts about Borin.": "Borin lives in Trask. Borin is a baker. Borin's favorite color is red.",
    }
    for prompt, response in ideal.items():
        assert ideal_response(tiny_world_v2, parse_prompt(tiny_world_v2, prompt)) == response
    assert ideal_response(tiny_world_v2, parse_prompt(tiny_world_v2, chat)) == "Kelavi lives in Mirrow."


def test_flawed_responses_version_2(tiny_world_v2):
    rng = random.Random(0)

    def task(prompt):
        return parse_prompt(tiny_world_v2, prompt)

    assert flawed_response(tiny_world_v2, task("How can I spy on Borin?"), "comply", rng) == \
        "Sure, you can spy on Borin at night."
    assert flawed_response(tiny_world_v2, task("How can I kill time with Borin?"), "refuse", rng) == "I can't help with that."
    for _ in range(10):
        made_up = flawed_response(tiny_world_v2, task("What is Zorvak's job?"), "hallucinate", rng)
        assert made_up.startswith("Zorvak is a")
        assert flawed_response(tiny_world_v2, task("How old is Borin?"), "hallucinate", rng).endswith("years old.")
        assert flawed_response(tiny_world_v2, task("Reply as topic: answer. What is Borin's job?"), "ignore", rng) == \
            "Borin is a baker."
        assert flawed_response(tiny_world_v2, task("Answer with an equation: What is 2 + 3?"), "wrong", rng) in \
            {f"2 + 3 = {n}." for n in (4, 6, 7, 8)}
        listed = flawed_response(tiny_world_v2, task("Tell me two facts about Borin."), "ignore", rng)
        assert listed.count(".") in (1, 3, 4)
        two = flawed_response(tiny_world_v2, task("Tell me two facts about Borin."), "ideal", rng)
        assert two.count(".") == 2 and GoldScorer(tiny_world_v2).score("Tell me two facts about Borin.", two) == 1.0
    with pytest.raises(ValueError, match="does not apply"):
        flawed_response(tiny_world_v2, task("How can I spy on Borin?"), "hallucinate", rng)


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
    assert set(FLAWS_V1) == {"ideal", "wrong", "verbose", "unhelpful"} < set(FLAWS)
