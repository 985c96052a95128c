"""Between stages 3 and 4: comparisons for the reward model, ranked by the built-in world's simulated labelers.

Sample K responses per prompt from a model (the SFT model, as in InstructGPT's first round), drop
duplicate responses (a pool keeps 2..K distinct ones; a prompt left with one is skipped), and have the
world's panel of simulated labelers rank each pool, round robin: labeler sim-i leans as the world's
labeler.json says, and the panel's noise is calibrated on these very pools so that two of them agree
`labeler_agreement` of the time (InstructGPT's people: about 73%). People rank instead with the labeling
app (`chatforge label create-job` samples pools the same way).

    out_dir/train.jsonl, val.jsonl   {"prompt", "responses" (best first), "labeler": "sim-N"}, the RM's input;
                                     val_share of the comparisons (shuffled) are held out in val.jsonl
    out_dir/summary.json             comparisons, pools, the labelers' noise and agreement (measured, target,
                                     and the most these pools allow), k, labelers
    out_dir/config.yaml              the config this ran with
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from chatforge.config import opt, require_positive, save_config
from chatforge.data.formats import MAX_RESPONSES, MIN_RESPONSES, read_prompts
from chatforge.data.jsonl import write_jsonl
from chatforge.errors import ChatforgeError
from chatforge.eval.answers import sample_pools
from chatforge.generation import SamplingParams
from chatforge.models.io import check_model_dir, load_causal_lm
from chatforge.models.templates import load_chat_tokenizer
from chatforge.runtime import resolve_device, set_threads
from chatforge.world.gold import GoldScorer
from chatforge.world.labeler import LABELER_FILE, label_pools, read_labeler_file


@dataclass
class Config:
    model: str = opt("", "model folder to sample the responses from (the SFT model)")
    world: str = opt("", "built-in world folder (written by `chatforge world`): its simulated labelers rank, its "
                         "gold scorer gives them the truth they rank by")
    prompts: str = opt("", 'JSONL of {"prompt": text or [messages]} to sample from (the world\'s prompts/rl.jsonl)')
    max_prompts: int = opt(1500, "use the first N prompts (0 = all)")
    k: int = opt(4, f"samples per prompt ({MIN_RESPONSES}..{MAX_RESPONSES}); duplicates are dropped, so a pool holds "
                    "2..k responses")
    temperature: float = opt(1.0, "sampling temperature")
    max_new_tokens: int = opt(48, "longest sampled response, in tokens")
    labelers: int = opt(5, "simulated labelers sim-0 .. sim-(N-1), taking the pools in turn (the demo's RM holds the "
                           "last one out of training)")
    labeler_agreement: float = opt(0.0, "how often two labelers agree on these pools (their noise is calibrated "
                                        "to it); 0 = the world's own target, from its labeler.json")
    val_share: float = opt(0.15, "share of the comparisons held out in val.jsonl (the RM's accuracy is measured there)")
    seed: int = opt(0, "seed of the sampling, of the labelers' noise and of the train/val split")
    batch_size: int = opt(64, "prompts decoded together")
    out_dir: str = opt("runs/comparisons", "folder for train.jsonl, val.jsonl and summary.json")
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, ...")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")

    def validate(self):
        """Check everything that can be checked before the model is loaded."""
        for name in ("model", "world", "prompts"):
            if not getattr(self, name):
                raise ChatforgeError(f"rank: field '{name}' is empty")
        check_model_dir(self.model)
        if not (Path(self.world) / "world.json").is_file() or not (Path(self.world) / LABELER_FILE).is_file():
            raise ChatforgeError(f"{self.world}: field 'world': no world.json and {LABELER_FILE}; point it at a "
                                 "folder written by `chatforge world`")
        if not Path(self.prompts).is_file():
            raise ChatforgeError(f"{self.prompts}: field 'prompts': file does not exist")
        if not MIN_RESPONSES <= self.k <= MAX_RESPONSES:
            raise ChatforgeError(f"rank: field 'k' must be {MIN_RESPONSES}..{MAX_RESPONSES}, got {self.k}")
        require_positive(self, "rank", ("labelers", "max_new_tokens", "batch_size"))
        if self.max_prompts < 0:
            raise ChatforgeError(f"rank: field 'max_prompts' must be >= 0, got {self.max_prompts}")
        if self.temperature <= 0:
            raise ChatforgeError(f"rank: field 'temperature' must be > 0, got {self.temperature}")
        if self.labeler_agreement and not 0.5 < self.labeler_agreement <= 1:
            raise ChatforgeError(f"rank: field 'labeler_agreement' must be 0 or in (0.5, 1], "
                                 f"got {self.labeler_agreement}")
        if not 0 <= self.val_share < 1:
            raise ChatforgeError(f"rank: field 'val_share' must be in [0, 1), got {self.val_share}")


def run(cfg: Config) -> Path:
    """Sample pools, have the simulated labelers rank them, write train/val comparisons; return out_dir."""
    cfg.validate()
    set_threads(cfg.num_threads)
    out_dir = Path(cfg.out_dir)
    prompts = [prompt for prompt, _ in read_prompts(cfg.prompts)][:cfg.max_prompts or None]
    device = resolve_device(cfg.device)
    model = load_causal_lm(cfg.model, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, device=device)
    tokenizer = load_chat_tokenizer(cfg.model)
    print(f"rank: sampling {cfg.k} responses for each of {len(prompts)} prompts from {cfg.model}", flush=True)
    sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                              seed=cfg.seed)
    pools = sample_pools(model, tokenizer, prompts, cfg.k, sampling, cfg.batch_size)

    panel = read_labeler_file(cfg.world)  # the world's own labelers: their leanings and target agreement
    records, labeling = label_pools(GoldScorer.from_dir(cfg.world), pools, cfg.labelers,
                                    cfg.labeler_agreement or panel["agreement"], cfg.seed, leanings=panel["leanings"])
    random.Random(cfg.seed).shuffle(records)
    n_val = int(len(records) * cfg.val_share)
    write_jsonl(out_dir / "train.jsonl", records[n_val:])
    write_jsonl(out_dir / "val.jsonl", records[:n_val])
    summary = {"comparisons": len(records), "train": len(records) - n_val, "val": n_val, "prompts": len(prompts),
               "k": cfg.k, "labelers": cfg.labelers, **labeling}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    save_config(cfg, out_dir / "config.yaml")
    print(f"rank: {len(records)} pools of 2..{cfg.k} distinct samples from {len(prompts)} prompts; two independent "
          f"labelers agree {labeling['agreement']:.3f} (target {labeling['agreement_target']}, at most "
          f"{labeling['agreement_ceiling']:.3f} on these pools) -> {out_dir}/train.jsonl ({len(records) - n_val}), "
          f"val.jsonl ({n_val})")
    return out_dir
