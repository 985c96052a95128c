from types import SimpleNamespace

from chatforge.eval import answers
from chatforge.eval.answers import fewshot_prompt, sample_pools

EXAMPLES = [("What is 3 plus 4?", "3 plus 4 is 7."), ("What is Borin's job?", "Borin is a baker.")]
SHOTS = ("Question: What is 3 plus 4?\nAnswer: 3 plus 4 is 7.\n\n"
         "Question: What is Borin's job?\nAnswer: Borin is a baker.\n\n")


def test_a_single_question_follows_the_worked_examples():
    assert fewshot_prompt("What is 2 plus 2?", EXAMPLES) == SHOTS + "Question: What is 2 plus 2?\nAnswer:"
    one_turn_chat = [{"role": "user", "content": "What is 2 plus 2?"}]
    assert fewshot_prompt(one_turn_chat, EXAMPLES) == fewshot_prompt("What is 2 plus 2?", EXAMPLES)


def test_a_follow_up_keeps_the_earlier_turns_as_question_answer_blocks():
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is Mira's job?"},
            {"role": "assistant", "content": "Mira is a smith."},
            {"role": "user", "content": "Where does she live?"}]
    assert fewshot_prompt(chat, EXAMPLES) == (SHOTS + "Question: What is Mira's job?\nAnswer: Mira is a smith.\n\n"
                                              "Question: Where does she live?\nAnswer:")
    assert fewshot_prompt(chat, []) == ("Question: What is Mira's job?\nAnswer: Mira is a smith.\n\n"
                                        "Question: Where does she live?\nAnswer:")


def test_pools_keep_distinct_non_empty_samples_and_skip_prompts_left_with_one(monkeypatch):
    samples = {"a": ["x", " x ", "y", ""], "b": ["z", "z", "z", " "], "c": ["1", "2", "3", "2"]}
    asked = []

    def fake_chat_answers(model, tokenizer, prompts, params, batch_size):
        asked.extend(prompts)
        return SimpleNamespace(texts=[text for prompt in dict.fromkeys(prompts) for text in samples[prompt]])

    monkeypatch.setattr(answers, "chat_answers", fake_chat_answers)
    pools = sample_pools(None, None, ["a", "b", "c"], 4, params=None)
    assert asked == ["a"] * 4 + ["b"] * 4 + ["c"] * 4  # K samples of each prompt, prompt-major
    assert pools == [("a", ["x", "y"]), ("c", ["1", "2", "3"])]  # "b" has one distinct answer: no pool
