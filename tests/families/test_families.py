"""chatforge on the model families people bring: the SFT mask, RM, PPO, LoRA, decoding and saved folders.

The families (tests/families/families.py) are tiny and built here; the "taught" models learned one
exchange by heart, so greedy decoding gives ANSWER and then the family's end-of-turn token.
"""

from __future__ import annotations

import io
import math
import sys

import pytest
import torch
from families import ANSWER, CHAT, FAMILIES, QUESTION, THINK, build_tokenizer, chat_of, taught_response
from starlette.testclient import TestClient

from chatforge.data.chat import chat_prompt_ids, tokenize_chat
from chatforge.data.jsonl import write_jsonl
from chatforge.metrics import read_metrics
from chatforge.models.io import load_causal_lm, load_tokenizer
from chatforge.models.reward import RewardJudge, chat_ids
from chatforge.models.templates import ensure_chat_template, load_chat_tokenizer
from chatforge.models.trainable import apply_lora, plain_model
from chatforge.stages import chat, generate, ppo, serve, sft

NAMES = list(FAMILIES)


def family_tokenizer(name: str):
    tokenizer = build_tokenizer(FAMILIES[name])
    ensure_chat_template(tokenizer, f"tests/families/{name}")  # GPT-2 has none: chatforge's
    return tokenizer


def expected_mask(tokenizer, name: str, text: str) -> list[int]:
    """1 on each token overlapping an assistant turn's text: after its header, through its end-of-turn token."""
    family, spans, start = FAMILIES[name], [], 0
    while (header := text.find(family.assistant_header, start)) >= 0:
        begin = header + len(family.assistant_header)
        start = text.index(family.end_of_turn, begin) + len(family.end_of_turn)
        spans.append((begin, start))
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [int(any(a < end and b > begin for begin, end in spans)) for a, b in offsets], spans


@pytest.mark.parametrize("with_system", [True, False], ids=["system", "no-system"])
@pytest.mark.parametrize("name", NAMES)
def test_sft_mask_is_each_reply_and_its_end_of_turn_token(name, with_system):
    tokenizer = family_tokenizer(name)
    messages = chat_of(FAMILIES[name]) if with_system else chat_of(FAMILIES[name])[1:]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    chat = tokenize_chat(tokenizer, messages)
    assert chat.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    mask, spans = expected_mask(tokenizer, name, text)
    assert chat.loss_mask == mask
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(spans) == len(replies) and all(reply.split("</think>\n\n")[-1] in text[begin:end]
                                              for reply, (begin, end) in zip(replies, spans))
    # what makes each template hard for the prefix rendering is really there
    if name == "llama3":
        assert text.count("Cutting Knowledge Date: December 2023\nToday Date: ") == 1
    if name == "qwen2" and not with_system:
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    if name == "qwen3":  # the first reply lost its reasoning, the last kept it
        assert text.count("add one to the sum") == 1 and THINK.strip() in text[spans[-1][0]:spans[-1][1]]
    if name == "gemma":
        assert "<start_of_turn>user\nBe brief.\n\nWhat is two plus two?" in text or not with_system


def test_a_tokenizer_without_template_gets_chatforges_and_one_warning(folders, capsys):
    base = folders.base("gpt2")
    assert not getattr(load_tokenizer(base), "chat_template", None)
    capsys.readouterr()
    tokenizers = [load_chat_tokenizer(base) for _ in range(2)]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "no chat template" in line]
    assert len(warnings) == 1 and str(base) in warnings[0]
    text = tokenizers[1].apply_chat_template(CHAT[1:3], tokenize=False)
    assert text == "<|user|>\nWhat is two plus two?<|endoftext|><|assistant|>\nIt is four.<|endoftext|>"


@pytest.mark.parametrize("name", NAMES)
def test_lora_all_linear_wraps_every_projection(name, folders):
    from transformers.pytorch_utils import Conv1D

    model = load_causal_lm(folders.base(name))
    projections = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))} - {"lm_head"}
    model = apply_lora(model, 4, 8.0, 0.0)
    wrapped = {n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == projections and projections
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # merged adapters (what the stages save) give the adapted model's logits; GPT-2's Conv1D stores W transposed
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        torch.testing.assert_close(plain_model(model)(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_sft_stage_with_lora(name, folders, tmp_path):
    data = write_jsonl(tmp_path / "demos.jsonl", [{"messages": chat_of(FAMILIES[name])}] * 4)
    cfg = sft.Config(model=str(folders.base(name)), train_data=[str(data)], out_dir=str(tmp_path / "sft"),
                     epochs=1, batch_size=2, lora_r=4, learning_rate=1e-3, log_every=1, tensorboard=False, device="cpu")
    cfg.validate()
    final = sft.run(cfg)
    losses = [m["train/loss"] for m in read_metrics(tmp_path / "sft") if "train/loss" in m]
    assert losses and all(math.isfinite(loss) for loss in losses)
    tokenizer = load_tokenizer(final)  # the template is saved with the model, GPT-2's included
    assert tokenizer.apply_chat_template(CHAT[1:2], tokenize=False, add_generation_prompt=True)
    load_causal_lm(final)


@pytest.mark.parametrize("name", NAMES)
def test_reward_model_reads_sequences_that_end_where_rollouts_end(name):
    tokenizer = family_tokenizer(name)
    rollout = chat_prompt_ids(tokenizer, QUESTION) + taught_response(tokenizer)  # prompt, reply, end of turn
    assert chat_ids(tokenizer, QUESTION, ANSWER) == rollout


@pytest.mark.parametrize("name", NAMES)
def test_reward_model_and_ppo(name, folders, tmp_path):
    rewards = RewardJudge(folders.rm(name))([QUESTION, QUESTION, "Be brief."], [ANSWER, "no", ANSWER + " " + ANSWER])
    assert len(rewards) == 3 and all(math.isfinite(r) for r in rewards) and len(set(rewards)) == 3
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": QUESTION}, {"prompt": "What is two plus two?"}])
    cfg = ppo.Config(policy=str(folders.taught(name)), reward_model=str(folders.rm(name)), prompts=str(prompts),
                     out_dir=str(tmp_path / "ppo"), steps=2, rollout_batch=4, minibatch_size=2, ppo_epochs=1,
                     max_new_tokens=8, learning_rate=1e-3, critic_learning_rate=1e-3, lora_r=4, save_every=0,
                     tensorboard=False, device="cpu")
    cfg.validate()
    final = ppo.run(cfg)
    metrics = read_metrics(tmp_path / "ppo")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m[key]) for m in metrics for key in ("rollout/reward", "train/policy_loss"))
    load_causal_lm(final)


def check_taught_reply(name: str, folder, response_ids: list[int]) -> None:
    """The reply is ANSWER's tokens and the end-of-turn token, nothing after."""
    tokenizer = load_tokenizer(folder)
    expected = taught_response(tokenizer)
    assert expected[-1] == tokenizer.convert_tokens_to_ids(FAMILIES[name].end_of_turn)
    assert tokenizer.decode(expected[:-1]).strip().endswith(ANSWER)
    assert response_ids == expected


@pytest.mark.parametrize("name", NAMES)
def test_generate_stops_at_the_end_of_turn(name, folders):
    taught = folders.taught(name)
    result = generate.run(generate.Config(model=str(taught), prompt=QUESTION, chat=True, max_new_tokens=20,
                                          device="cpu"))
    check_taught_reply(name, taught, result.response_ids[0])
    assert result.finished == [True]


@pytest.mark.parametrize("name", NAMES)
def test_chat_stops_at_the_end_of_turn(name, folders, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(QUESTION + "\n"))
    history = chat.run(chat.Config(model=str(folders.taught(name)), temperature=0, max_new_tokens=20, device="cpu"))
    assert "cut at the token limit" not in capsys.readouterr().out  # special tokens after the reply print as ""
    assert history[-1]["role"] == "assistant" and history[-1]["content"].strip().endswith(ANSWER)
    assert history[-1]["content"].strip().removesuffix(ANSWER).strip() in ("", "<think>\n\n</think>")


@pytest.mark.parametrize("name", NAMES)
def test_serve_stops_at_the_end_of_turn(name, folders):
    server = serve.build_server(serve.Config(model=str(folders.taught(name)), port=0, device="cpu"))
    with TestClient(server.config.app, base_url="http://127.0.0.1") as client:
        response = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 20, "temperature": 0})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"].strip().removesuffix(ANSWER).strip() in ("", "<think>\n\n</think>")
    assert choice["message"]["content"].strip().endswith(ANSWER)


@pytest.mark.parametrize("name", NAMES)
def test_saved_folder_stops_in_plain_transformers(name, folders):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    taught = folders.taught(name)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(taught), AutoTokenizer.from_pretrained(taught)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    check_taught_reply(name, taught, output[0, inputs["input_ids"].shape[1]:].tolist())
