"""The model card: Hugging Face's YAML block parses and says what the run was; the body only holds given numbers."""

import yaml

from chatforge.models.card import model_card
from chatforge.stages.tokenizer import build_tokenizer


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_metadata_names_the_stage_base_model_and_data():
    tokenizer = build_tokenizer(["the cat sat on the mat"] * 20, vocab_size=300)
    data = ["prompts: rl.jsonl", "c:\\corpus #1.jsonl"]  # YAML's special characters survive
    card = model_card("ppo-ptx", tokenizer, base_model="runs/demo/sft/best", folder="runs/demo/ppo_ptx/final",
                      data=data, metrics={"rollout/reward": 0.123456, "steps": 4, "missing": None}, version="9.9")
    meta = front_matter(card)
    assert meta == {"library_name": "transformers", "base_model": "runs/demo/sft/best",
                    "tags": ["chatforge", "ppo-ptx"], "datasets": data, "license": "",
                    "pipeline_tag": "text-generation"}
    assert "chatforge 9.9" in card and "| rollout/reward | 0.1235 |" in card and "| steps | 4 |" in card
    assert "missing" not in card
    assert 'from_pretrained("runs/demo/ppo_ptx/final")' in card and "add_generation_prompt=True" in card
    assert "stops at `<|endoftext|>` or `<|end|>`" in card


def test_card_without_base_model_or_template_and_for_a_reward_model():
    tokenizer = build_tokenizer(["the cat sat on the mat"] * 20, vocab_size=300)
    tokenizer.chat_template = None
    card = model_card("pretrain", tokenizer)
    meta = front_matter(card)
    assert "base_model" not in meta and "datasets" not in meta and meta["tags"] == ["chatforge", "pretrain"]
    assert "apply_chat_template" not in card and "stops at `<|endoftext|>`:" in card
    reward = model_card("rm", tokenizer, base_model="sft/best", reward_model=True)
    assert front_matter(reward)["tags"] == ["chatforge", "rm", "reward-model"]
    assert "AutoModelForSequenceClassification" in reward and "pipeline_tag" not in reward
