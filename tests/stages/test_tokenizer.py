from transformers import AutoTokenizer

from chatforge.stages.tokenizer import END_OF_TURN, EOS, ROLE_TOKENS


def test_autotokenizer_loads_and_roundtrips(toy_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(toy_tokenizer_dir)
    assert tokenizer.eos_token == EOS and tokenizer.pad_token_id is not None
    assert len(tokenizer) <= 300
    text = "Borin lives in Trask, zebra! ünïcödé 🙂"  # bytes never seen in training still encode
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    for special in (END_OF_TURN, *ROLE_TOKENS.values()):
        assert len(tokenizer(special, add_special_tokens=False)["input_ids"]) == 1


def test_chat_template_and_assistant_mask(toy_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(toy_tokenizer_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the cat"},
                {"role": "assistant", "content": "sat."}, {"role": "user", "content": "and?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|system|>Be brief.<|end|><|user|>the cat<|end|><|assistant|>sat.<|end|>"
                    "<|user|>and?<|end|><|assistant|>")
    out = tokenizer.apply_chat_template(messages[:3], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    tokens = tokenizer.convert_ids_to_tokens(out["input_ids"])
    masked = [t for t, m in zip(tokens, out["assistant_masks"]) if m]
    assert "".join(masked) == "sat.<|end|>"
