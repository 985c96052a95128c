"""How fast does pretraining run, and how close to the machine's matmul peak does it get?

Measures, in one run:
  - the machine's matmul peak (the best FLOP/s of square matmuls of a few sizes; fp32 on CPU, bf16 on GPU);
  - for several model presets, training tokens/s of the pretraining step (forward, backward, AdamW,
    with the stage's own loss, optimizer and autocast) and the achieved FLOP/s, as a ratio of the peak
    (MFU). FLOPs per token = 6 * parameters + 12 * layers * hidden * seq_len (PaLM's formula);
  - the data path alone (tokenize + pack blocks/s), to show it is not the bottleneck.
Medians over several timed windows. Usage: python benchmarks/pretrain_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.models.presets import count_parameters, llama_config  # noqa: E402
from chatforge.optim import build_optimizer  # noqa: E402
from chatforge.runtime import autocast, autocast_dtype  # noqa: E402
from chatforge.stages.pretrain import lm_loss  # noqa: E402

from _table import Report, add_json_arg  # noqa: E402  (benchmarks/, the script's own folder)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Median FLOP/s of a (size x size) @ (size x size) matmul."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    rates = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        rates.append(4 * 2 * size**3 / (time.perf_counter() - start))
    return statistics.median(rates)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(preset: str, vocab: int, seq_len: int, batch: int, device, amp_dtype, windows: int, steps: int):
    """(median tokens/s, parameters, FLOPs per token) of the pretraining step for one preset."""
    config = llama_config(preset, vocab_size=vocab, max_position_embeddings=seq_len, bos_token_id=None,
                          eos_token_id=0, pad_token_id=1)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device).train()
    optimizer = build_optimizer(model, 1e-3, 0.1)
    params = count_parameters(model)
    flops_per_token = 6 * params + 12 * config.num_hidden_layers * config.hidden_size * seq_len
    block = torch.randint(0, vocab, (batch, seq_len + 1), device=device)

    def step():
        with autocast(device, amp_dtype):
            loss = lm_loss(model, block[:, :-1], block[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    rates = []
    for _ in range(windows):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        rates.append(steps * batch * seq_len / (time.perf_counter() - start))
    return statistics.median(rates), params, flops_per_token


def data_rate(seq_len: int) -> float:
    """Blocks of packed tokens per second from a JSONL corpus through the stage's data path."""
    import random

    from chatforge.data.jsonl import write_jsonl
    from chatforge.data.packing import PackedBlocks
    from chatforge.stages.tokenizer import build_tokenizer

    rng = random.Random(0)
    words = [f"w{i}" for i in range(500)]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 200))) for _ in range(5000)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.jsonl"
        write_jsonl(path, [{"text": d} for d in docs])
        tokenizer = build_tokenizer(docs[:1000], vocab_size=2048)
        start = time.perf_counter()
        tokens = sum(len(b) - 1 for b in PackedBlocks(path, tokenizer, seq_len).epoch(0))
        return tokens / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer presets and windows")
    parser.add_argument("--presets", default=None, help="comma-separated presets (default by device)")
    add_json_arg(parser)
    args = parser.parse_args()
    report = Report("pretrain_throughput", args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp_dtype = autocast_dtype("auto", device)
    peak_dtype = amp_dtype or torch.float32
    # the best of several sizes: small matmuls underrate what the cores can do
    sizes = (4096, 8192, 16384) if device.type == "cuda" else (1024, 2048, 4096)
    peak = max(matmul_peak(device, peak_dtype, size) for size in sizes)
    if args.presets:
        presets = args.presets.split(",")
    elif device.type == "cuda":
        presets = ["small", "medium", "gpt2-124m"]
    else:
        presets = ["tiny", "mini"] if args.quick else ["tiny", "mini", "small"]
    windows, steps = (3, 3) if args.quick else (5, 5)
    seq_len, batch = (1024, 32) if device.type == "cuda" else (256, 16)
    vocab = 50257 if device.type == "cuda" else 2048

    print(f"device: {device} ({torch.get_num_threads()} threads), autocast: {amp_dtype}, torch {torch.__version__}")
    print(f"matmul peak ({str(peak_dtype).replace('torch.', '')}, best of sizes {sizes}): {peak / 1e9:,.1f} GFLOP/s")
    print(f"batch {batch} x seq {seq_len}, vocab {vocab}; medians of {windows} windows x {steps} steps\n")
    rows, peak_fraction = [], {}
    for preset in presets:
        rate, params, fpt = train_rate(preset, vocab, seq_len, batch, device, amp_dtype, windows, steps)
        achieved = rate * fpt
        peak_fraction[preset] = achieved / peak
        rows.append([preset, f"{params / 1e6:.2f}M", f"{rate:,.0f}", f"{achieved / 1e9:,.2f}",
                     f"{achieved / peak:.3f}"])
    report.table(["preset", "params", "tokens/s", "achieved GFLOP/s", "MFU (achieved / peak)"], rows)
    data_tokens_per_s = data_rate(seq_len)
    print(f"\ndata path (tokenize + pack, one process): {data_tokens_per_s:,.0f} tokens/s")
    report.put(peak_fraction=peak_fraction, peak_flops=peak, data_tokens_per_s=data_tokens_per_s)
    report.write()


if __name__ == "__main__":
    main()
