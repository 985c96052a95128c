"""A model folder chatforge writes works in plain transformers: generate stops at the end of a turn."""

import json

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatforge.stages import sft


def test_a_trained_chat_model_stops_at_the_end_of_its_turn_in_plain_transformers(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    best = sft.run(sft.Config(model=str(base), train_data=[str(world_dir / "demos" / "train.jsonl")],
                              out_dir=str(tmp_path / "sft"), epochs=3, batch_size=4, learning_rate=3e-3,
                              select_by="last", tensorboard=False))
    # no chatforge code from here on: what a user of transformers (or a pipeline over it) does
    tokenizer = AutoTokenizer.from_pretrained(best)
    model = AutoModelForCausalLM.from_pretrained(best).eval()
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    prompts = [json.loads(line)["prompt"] for line in (world_dir / "prompts" / "eval.jsonl").open()][:4]
    ended = 0
    for prompt in prompts:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=48, do_sample=False)
        reply = output[0, inputs["input_ids"].shape[1]:].tolist()
        if end in reply:  # the turn ends there: nothing after it
            assert reply.index(end) == len(reply) - 1, tokenizer.decode(reply)
            ended += 1
    assert ended >= 2, "the model should end most replies with <|end|>"
    config = json.loads((best / "generation_config.json").read_text())
    assert config["eos_token_id"] == [tokenizer.eos_token_id, end]
    assert config["pad_token_id"] == tokenizer.pad_token_id
    card = (best / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "transformers" and meta["base_model"] == str(base)
    assert meta["tags"] == ["chatforge", "sft"] and meta["datasets"] == [str(world_dir / "demos" / "train.jsonl")]
    assert "license" in meta and "`<|end|>`" in card


def test_a_users_generation_config_keeps_its_fields_and_gains_the_stop_ids(tmp_path):
    from transformers import LlamaConfig

    from chatforge.models.io import load_causal_lm, save_hf_folder
    from chatforge.stages.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(["the cat sat on the mat"] * 20, vocab_size=300)
    eos, end, pad = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.pad_token_id
    hub = tmp_path / "hub_model"
    AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, eos_token_id=eos)).save_pretrained(hub)
    # a hub model's defaults, one of them (temperature with do_sample off) a config transformers warns about
    user_config = {"eos_token_id": [eos, 7], "temperature": 0.6, "top_p": 0.9, "do_sample": False,
                   "repetition_penalty": 1.1, "max_new_tokens": 256}
    (hub / "generation_config.json").write_text(json.dumps(user_config))
    saved = save_hf_folder(load_causal_lm(hub), tokenizer, tmp_path / "out")
    config = json.loads((saved / "generation_config.json").read_text())
    assert {key: config[key] for key in ("temperature", "top_p", "do_sample", "repetition_penalty",
                                         "max_new_tokens")} == {key: user_config[key] for key in user_config
                                                                if key != "eos_token_id"}
    assert config["eos_token_id"] == [eos, end, 7] and config["pad_token_id"] == pad
    assert not (saved / "README.md").exists()  # cards are for final folders, passed by the stage
    tokenizer.chat_template = None  # a plain language model: EOS (and what the user listed), no end of turn
    saved = save_hf_folder(load_causal_lm(hub), tokenizer, tmp_path / "plain")
    assert json.loads((saved / "generation_config.json").read_text())["eos_token_id"] == [eos, 7]
