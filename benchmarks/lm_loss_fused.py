"""Is the fused LM-head loss faster than `model(...).logits` + cross-entropy? One pretraining step, side by side.

For each preset, two copies of the same model (same seed) train on the same random block with the stage's
optimizer: one through `chatforge.models.lm_loss.causal_lm_loss` (head and cross-entropy fused in chunks,
what pretraining, SFT and the ptx loss use), one through the full logits and `token_cross_entropy`. Their
steps alternate, so drifts in machine load hit both; the table gives the median step of each and the ratio.

    python benchmarks/lm_loss_fused.py [--presets tiny,mini,small] [--steps 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.losses import token_cross_entropy  # noqa: E402
from chatforge.models.lm_loss import causal_lm_loss  # noqa: E402
from chatforge.models.presets import llama_config  # noqa: E402
from chatforge.optim import build_optimizer  # noqa: E402

from _table import Report, add_json_arg  # noqa: E402  (benchmarks/, the script's own folder)


def plain_loss(model, inputs, labels):
    return token_cross_entropy(model(input_ids=inputs, use_cache=False).logits, labels)


def make_step(preset: str, loss_fn, block: torch.Tensor, vocab: int):
    """A closure running one pretraining step (forward, backward, clipping, AdamW) of a fresh model."""
    torch.manual_seed(0)
    config = llama_config(preset, vocab_size=vocab, max_position_embeddings=block.shape[1], bos_token_id=None,
                          eos_token_id=0, pad_token_id=1)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    optimizer = build_optimizer(model, 1e-3, 0.1)

    def step() -> float:
        start = time.perf_counter()
        loss_fn(model, block[:, :-1], block[:, 1:]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,mini,small")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each side")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    add_json_arg(parser)
    args = parser.parse_args()
    report = Report("lm_loss_fused", args)
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; batch {args.batch} x seq {args.seq_len}, "
          f"vocab {args.vocab}; median of {args.steps} alternating steps\n")
    rows, speedups = [], {}
    for preset in args.presets.split(","):
        block = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0))
        fused, plain = make_step(preset, causal_lm_loss, block, args.vocab), make_step(preset, plain_loss, block, args.vocab)
        for _ in range(2):  # warm-up
            fused(), plain()
        fused_s, plain_s = [], []
        for _ in range(args.steps):
            fused_s.append(fused())
            plain_s.append(plain())
        speedups[preset] = statistics.median(plain_s) / statistics.median(fused_s)
        rows.append([preset, f"{statistics.median(fused_s) * 1e3:.1f}", f"{statistics.median(plain_s) * 1e3:.1f}",
                     f"{speedups[preset]:.2f}x"])
    report.table(["preset", "fused ms / step", "plain ms / step", "plain / fused"], rows)
    report.put(speedup=speedups)
    report.write()


if __name__ == "__main__":
    main()
