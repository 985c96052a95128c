"""Each family's model folders, built once per session when a test first asks for them."""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES, save_base, teach

from chatforge.models.io import load_tokenizer, save_hf_folder


class FamilyFolders:
    """base(name): the random tiny model; taught(name): it after SFT steps on one exchange; rm(name): an RM on that."""

    def __init__(self, root):
        self.root, self.cache = root, {}

    def _get(self, kind: str, name: str, build):
        if (kind, name) not in self.cache:
            self.cache[kind, name] = build(self.root / name / kind)
        return self.cache[kind, name]

    def base(self, name: str):
        return self._get("base", name, lambda path: save_base(FAMILIES[name], path))

    def taught(self, name: str):
        return self._get("taught", name, lambda path: teach(self.base(name), path))

    def rm(self, name: str):
        """A reward model on the taught model with a random head, so rewards differ between responses."""
        from chatforge.models.reward import build_reward_model

        def build(path):
            tokenizer = load_tokenizer(self.taught(name))
            model = build_reward_model(self.taught(name), tokenizer.pad_token_id)
            torch.manual_seed(0)
            torch.nn.init.normal_(model.score.weight, std=0.3)
            return save_hf_folder(model, tokenizer, path)
        return self._get("rm", name, build)


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    return FamilyFolders(tmp_path_factory.mktemp("families"))
