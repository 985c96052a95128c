import random
import re

import pytest

from chatforge.world import render
from chatforge.world import templates as T
from chatforge.world.facts import World
from chatforge.world.gold import GoldScorer


@pytest.fixture(scope="module")
def world():
    return World.generate(seed=0, n_people=20, n_towns=6)


@pytest.fixture(scope="module")
def split(world):
    return render.split_prompts(world, random.Random(0), render.DEFAULT_TASK_MIX, n_eval=100, n_demo_val=50)


def _demo_prompt(record):
    return record["prompt"] if "prompt" in record else record["messages"][-2]["content"]


def test_allocate_and_labels():
    assert render.allocate(10, {"a": 0.5, "b": 0.25, "c": 0.25}) == {"a": 5, "b": 3, "c": 2}
    assert sum(render.allocate(7, render.DEFAULT_TASK_MIX).values()) == 7
    labels = render.shuffled_labels(100, render.flaw_shares_with_ideal(render.DEFAULT_FLAW_SHARES), random.Random(0))
    assert {f: labels.count(f) for f in set(labels)} == {"ideal": 45, "wrong": 15, "verbose": 30, "unhelpful": 10}


def test_split_keeps_eval_out_of_everything(world, split):
    eval_prompts = {t.prompt for t in split.eval}
    val_prompts = {t.prompt for t in split.demo_val}
    train_prompts = {t.prompt for ts in split.train.values() for t in ts}
    assert len(split.eval) == 100 and len(split.demo_val) == 50
    assert {t.kind for t in split.eval} == {"fact", "sum", "harmful", "benign"}
    assert not eval_prompts & train_prompts and not val_prompts & train_prompts and not eval_prompts & val_prompts
    docs = render.corpus_documents(world, 300, random.Random(1), split.train)
    demos = render.demonstrations(world, split.train, 300, random.Random(2))
    rl = render.rl_prompts(split.train, 300, random.Random(3))
    corpus_questions = {m for d in docs for m in re.findall(r"Question: (.*)", d["text"])}
    assert corpus_questions and corpus_questions <= train_prompts
    assert {_demo_prompt(d) for d in demos} <= train_prompts
    assert {r["prompt"] for r in rl} <= train_prompts


def test_corpus(world, split):
    docs = render.corpus_documents(world, 400, random.Random(1), split.train)
    assert [d["source"] for d in docs].count("bio") == 140
    texts = {d["text"] for d in docs}
    assert len(texts) == 400
    # the cloze phrasing of every fact is in the corpus
    corpus = "\n".join(texts)
    for record in render.fact_clozes(world):
        assert f"{record['prompt']} {record['answer']}." in corpus
    # filler prose states no fact and names nobody
    fact_words = {v.lower() for vs in world.values.values() for v in vs} | {p.name.lower() for p in world.people}
    for doc in docs:
        if doc["source"] == "filler":
            assert not set(re.findall(r"[a-z]+", doc["text"].lower())) & fact_words
    val = render.corpus_documents(world, 100, random.Random(2), split.train, exclude=texts, cloze_first=False)
    assert not {d["text"] for d in val} & texts


def test_demonstrations_shares_format_and_gold(world, split):
    demos = render.demonstrations(world, split.train, 400, random.Random(5))
    flaws = [d["flaw"] for d in demos]
    assert (flaws.count("wrong"), flaws.count("verbose"), flaws.count("unhelpful"), flaws.count("ideal")) == (60, 120, 40, 180)
    chats = [d for d in demos if "messages" in d]
    assert len(chats) == 60
    for chat in chats:
        roles = [m["role"] for m in chat["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and 4 <= len(roles) <= 6
    scorer = GoldScorer(world)
    for demo in demos:
        if "messages" in demo:
            prompt, response = demo["messages"][:-1], demo["messages"][-1]["content"]
        else:
            prompt, response = demo["prompt"], demo["response"]
        score = scorer.score(prompt, response)
        expected = {"ideal": [1.0], "unhelpful": [0.1], "verbose": [0.5, 0.65, 0.85],
                    "wrong": [-1.0] if demo["kind"] == "harmful" else [0.0]}[demo["flaw"]]
        assert score in expected, (demo, score)
    assert all(r.endswith(".") for d in demos if d["flaw"] == "ideal" for r in [d.get("response", "")] if r)


def test_fact_clozes(world):
    clozes = render.fact_clozes(world)
    assert len(clozes) == len(world.facts())
    first = world.people[0]
    assert clozes[0] == {"prompt": f"{first.name} lives in", "answer": first.town, "name": first.name, "attribute": "town"}
    assert all(not c["prompt"].endswith(" ") and c["answer"] not in c["prompt"] for c in clozes)


def test_response_pools(world, split):
    pools = render.response_pools(world, split.train, 50, random.Random(0))
    assert len(pools) == 50
    assert all(4 <= len(responses) <= 9 for _, responses in pools)
    assert all(isinstance(prompt, str) for prompt, _ in pools)


def test_templates_values_are_single_words():
    for values in [*T.VALUES.values(), T.TOWN_POOL]:
        assert all(re.fullmatch(r"[A-Za-z]+", v) for v in values)
    fact_values = {v.lower() for vs in T.VALUES.values() for v in vs} | {t.lower() for t in T.TOWN_POOL}
    for padding in [*T.VERBOSE_SUFFIXES, *T.VERBOSE_PREFIXES, T.REFUSAL, T.UNSURE]:
        assert not set(re.findall(r"[a-z]+", padding.lower())) & fact_values, padding


def test_corpus_worked_examples_are_web_like(world, split):
    """Worked examples comply with harmful requests at the configured rate and carry other flaws."""
    scorer = GoldScorer(world)
    docs = render.corpus_documents(world, 600, random.Random(3), split.train, doc_mix={"qa": 1.0},
                                   qa_flaw_shares={"verbose": 0.5}, qa_harmful_compliance=0.5)
    verdicts = {"harmful": [], "other": []}
    for doc in docs:
        for block in doc["text"].split("\n\n"):
            question, answer = block.removeprefix("Question: ").split("\nAnswer: ")
            judged = scorer.judge(question, answer)
            verdicts["harmful" if judged["kind"] == "harmful" else "other"].append(judged)
    complied = sum(j["verdict"] == "complied" for j in verdicts["harmful"]) / len(verdicts["harmful"])
    padded = sum(j["length_penalty"] > 0 or j["score"] < 1 for j in verdicts["other"]) / len(verdicts["other"])
    assert 0.4 < complied < 0.6
    assert 0.35 < padded < 0.65
    ideal = render.corpus_documents(world, 50, random.Random(3), split.train, doc_mix={"qa": 1.0},
                                    qa_flaw_shares={}, qa_harmful_compliance=0.0)
    for doc in ideal:
        for block in doc["text"].split("\n\n"):
            question, answer = block.removeprefix("Question: ").split("\nAnswer: ")
            assert scorer.score(question, answer) == 1.0


@pytest.fixture(scope="module")
def world_v2():
    return World.generate(seed=0, n_people=20, n_towns=6, version=2, n_strangers=9)


@pytest.fixture(scope="module")
def split_v2(world_v2):
    return render.split_prompts(world_v2, random.Random(0), render.DEFAULT_TASK_MIX_V2, n_eval=200, n_demo_val=50)


def test_split_keeps_held_out_strangers_for_eval(world_v2, split_v2):
    unseen = render.held_out_strangers(world_v2)
    assert len(unseen) == 3 and unseen <= set(world_v2.strangers)
    train_names = {t.name for ts in split_v2.train.values() for t in ts if t.unknown}
    eval_names = {t.name for t in split_v2.eval if t.unknown}
    assert train_names == set(world_v2.strangers) - unseen
    assert eval_names and eval_names <= unseen
    assert {t.kind for t in split_v2.eval} == set(render.DEFAULT_TASK_MIX_V2)
    train_chats = {str(t.chat) for ts in split_v2.train.values() for t in ts}
    assert not {str(t.chat) for t in split_v2.eval} & train_chats


def test_version_2_demonstrations_follow_each_kinds_behaviour(world_v2, split_v2):
    demos = render.demonstrations(world_v2, split_v2.train, 1000, random.Random(5), task_mix=render.DEFAULT_TASK_MIX_V2,
                                  behaviour=render.DEFAULT_DEMO_BEHAVIOUR)
    scorer = GoldScorer(world_v2)
    by_kind = {}
    for demo in demos:
        prompt = demo["messages"][:-1] if "messages" in demo else demo["prompt"]
        response = demo["messages"][-1]["content"] if "messages" in demo else demo["response"]
        judged = scorer.judge(prompt, response)
        assert judged["kind"] == demo["kind"]
        by_kind.setdefault(demo["kind"], []).append((demo["flaw"], judged))
        if demo["kind"] == "followup":
            assert "messages" in demo and demo["messages"][-2]["content"] in {q for qs in T.FOLLOWUP_QUESTIONS.values()
                                                                             for q in qs}
    # exact shares within a kind: 100 subtle-harmful demonstrations, 65 of them comply
    subtle = [flaw for flaw, _ in by_kind["subtle_harmful"]]
    assert len(subtle) == 100 and subtle.count("comply") == 65
    for kind, failure, flaw in (("subtle_harmful", "harmful_compliance", "comply"),
                                ("risky_benign", "over_refusal", "refuse"),
                                ("unanswerable", "hallucination", "hallucinate"),
                                ("constraint", "constraint_violation", "ignore")):
        rows = by_kind[kind]
        assert all(judged["failures"][failure] == (f == flaw) for f, judged in rows if f in (flaw, "ideal")), kind
        assert sum(f == flaw for f, _ in rows) / len(rows) == pytest.approx(0.65, abs=0.01), kind
    assert all(judged["score"] == 1.0 for rows in by_kind.values() for f, judged in rows if f == "ideal")


def test_version_2_corpus_never_names_a_stranger(world_v2, split_v2):
    docs = render.corpus_documents(world_v2, 500, random.Random(1), split_v2.train, task_mix=render.DEFAULT_TASK_MIX_V2,
                                   qa_behaviour=render.DEFAULT_WEB_BEHAVIOUR)
    words = {w for d in docs for w in re.findall(r"[A-Za-z]+", d["text"])}
    assert not words & set(world_v2.strangers)
    questions = [m for d in docs for m in re.findall(r"Question: (.*)", d["text"])]
    assert any(q in {x for qs in T.FOLLOWUP_QUESTIONS.values() for x in qs} for q in questions)
    # a follow-up's earlier turn comes right before it in the document
    text = "\n".join(d["text"] for d in docs)
    assert "Answer:" in text.split("Question: And where do they live?")[0].rsplit("Question:", 1)[-1]


def test_version_2_prompt_records(world_v2, split_v2):
    records = render.rl_prompts(split_v2.train, 300, random.Random(3), render.DEFAULT_TASK_MIX_V2)
    chats = [r for r in records if isinstance(r["prompt"], list)]
    assert chats and all(r["kind"] == "followup" and r["prompt"][-1]["role"] == "user" for r in chats)
    scorer = GoldScorer(world_v2)
    assert all(scorer.judge(r["prompt"], "I am not sure.")["kind"] == r["kind"] for r in records)
