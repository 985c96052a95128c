from chatforge.eval.answers import fewshot_prompt

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
