"""The end-of-turn token read off a chat template, for the templates of the main model families (no downloads)."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from chatforge.models.stops import end_of_turn_ids, stop_token_ids
from chatforge.stages.tokenizer import build_tokenizer

# the families' templates, cut to what renders a plain user / assistant exchange
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
         "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + "
         "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
LLAMA2 = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
          "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
          "{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")


def family_tokenizer(template, eos, bos=None, extra=()):
    """A word-level tokenizer with the family's special tokens and chat template."""
    vocab = {word: i for i, word in enumerate(["[UNK]", "hi", "there", "user", "assistant", "model", "[INST]"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, bos_token=bos, unk_token="[UNK]",
                                        additional_special_tokens=list(extra))
    tokenizer.chat_template = template
    return tokenizer


FAMILIES = {
    "chatml": (CHATML, "<|endoftext|>", None, ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    "llama3": (LLAMA3, "<|end_of_text|>", "<|begin_of_text|>",
               ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>"),
    "gemma": (GEMMA, "<eos>", "<bos>", ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>"),
    "llama2": (LLAMA2, "</s>", "<s>", [], "</s>"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_end_of_turn_read_off_each_familys_template(family):
    template, eos, bos, extra, end = FAMILIES[family]
    tokenizer = family_tokenizer(template, eos, bos, extra)
    end_id = tokenizer.convert_tokens_to_ids(end)
    assert end_of_turn_ids(tokenizer) == [end_id]
    # EOS first, then the end-of-turn token unless it is the EOS itself (Llama 2 / Mistral end turns with </s>)
    assert stop_token_ids(tokenizer) == list(dict.fromkeys([tokenizer.eos_token_id, end_id]))


def test_chatforges_own_template_ends_turns_with_end():
    tokenizer = build_tokenizer(["the cat sat on the mat"] * 20, vocab_size=300)
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    assert end_of_turn_ids(tokenizer) == [end_id]
    assert stop_token_ids(tokenizer) == [tokenizer.eos_token_id, end_id]


def test_no_template_or_a_template_that_fails_gives_eos_only():
    tokenizer = family_tokenizer(None, "<|endoftext|>", extra=["<|im_end|>"])
    assert end_of_turn_ids(tokenizer) == [] and stop_token_ids(tokenizer) == [tokenizer.eos_token_id]
    tokenizer.chat_template = "{{ raise_exception('system message required') }}"
    assert stop_token_ids(tokenizer) == [tokenizer.eos_token_id]
