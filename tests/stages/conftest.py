"""Fixtures of the stages' tests."""

import pytest
import torch

from chatforge.models.io import load_tokenizer, save_hf_folder
from chatforge.models.reward import build_reward_model


@pytest.fixture(scope="session")
def random_reward_model_dir(tiny_world_base, tmp_path_factory):
    """A reward model on the tiny base model with a random head (rewards vary, so there is a signal to follow)."""
    _, base = tiny_world_base
    tokenizer = load_tokenizer(base)
    torch.manual_seed(0)
    model = build_reward_model(base, tokenizer.pad_token_id)
    torch.nn.init.normal_(model.score.weight, std=0.3)
    return save_hf_folder(model, tokenizer, tmp_path_factory.mktemp("random_rm") / "rm")
