"""Is our decoding loop faster than `model.generate`? Greedy tokens/s, side by side, on random Llamas.

Same model, same prompts (random lengths, so batches are left padded), greedy, batch 1 and 32:

- stops "none": both make exactly --new-tokens tokens per row (no stop ids for ours, EOS switched off
  in HF's generation config), so the ratio measures the loop and the KV cache alone;
- stops "spread" (batch 32 only, the shape of a PPO rollout): a set of stop ids taken from the
  greedy outputs so rows end at different steps; both engines produce the same tokens (checked),
  ours drops finished rows from the batch (once a quarter is done), HF keeps computing them as padding.

Time covers prefill + decode; tokens/s counts generated tokens (stop tokens included).

    python benchmarks/generation_throughput.py [--new-tokens 64] [--repeats 5]

Uses the GPU when torch sees one. On 2 CPU cores the whole run takes about two minutes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from chatforge.generation import SamplingParams, generate

from _table import Report, add_json_arg  # benchmarks/, the script's own folder

MODELS = {
    "llama-1M": dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=4),
    "llama-20M": dict(vocab_size=2048, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=8),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ours(model, prompts, new_tokens: int, device, stop_ids: list[int]) -> tuple[float, list[list[int]]]:
    """Seconds for one greedy `generate` call, and the response ids."""
    params = SamplingParams(max_new_tokens=new_tokens, stop_token_ids=stop_ids)  # [] = never stop early
    sync(device)
    start = time.perf_counter()
    result = generate(model, None, prompts, params)
    sync(device)
    return time.perf_counter() - start, result.response_ids


def time_hf(model, prompts, new_tokens: int, device, stop_ids: list[int]) -> tuple[float, list[list[int]]]:
    """Seconds for one greedy `model.generate` call on the same left-padded batch, and the response ids."""
    # left padding with a mask: the same inputs our engine builds
    width = max(len(p) for p in prompts)
    input_ids = torch.zeros((len(prompts), width), dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt):] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                             max_new_tokens=new_tokens, pad_token_id=0, eos_token_id=stop_ids or None)
    sync(device)
    elapsed = time.perf_counter() - start
    responses = []
    for row in out[:, width:].tolist():  # HF pads rows after their stop token: cut there
        end = next((t + 1 for t, token in enumerate(row) if token in stop_ids), len(row))
        responses.append(row[:end])
    return elapsed, responses


def spread_stop_ids(responses: list[list[int]]) -> list[int]:
    """Stop ids that end row i near step i * len / rows, so rows finish at spread-out steps.

    For each row, the first token at or after its target step that does not occur before the target
    in any row (random models repeat tokens a lot, so most candidates would cut rows short).
    """
    rows = len(responses)
    targets = [i * len(r) // rows for i, r in enumerate(responses)]
    seen_early = {token for r, target in zip(responses, targets) for token in r[:target]}
    stop_ids = set()
    for r, target in zip(responses, targets):
        stop_ids.update(next(([t] for t in r[target:] if t not in seen_early), []))
    return sorted(stop_ids)


def measure(model, prompts, new_tokens, device, stop_ids, repeats) -> tuple[float, float, int]:
    """Median tokens/s of ours and of HF, and the tokens each call makes; both must agree on the tokens."""
    time_ours(model, prompts, 4, device, stop_ids)  # warm-up both paths (allocator, kernels)
    time_hf(model, prompts, 4, device, stop_ids)
    ours, hf = [], []
    for _ in range(repeats):  # interleaved, so drift in machine load hits both
        seconds, ours_ids = time_ours(model, prompts, new_tokens, device, stop_ids)
        ours.append(seconds)
        seconds, hf_ids = time_hf(model, prompts, new_tokens, device, stop_ids)
        hf.append(seconds)
    tokens = sum(len(r) for r in ours_ids)
    same = sum(a == b for a, b in zip(ours_ids, hf_ids))
    if same < len(prompts):  # float ties can flip a token; it must stay rare
        print(f"  note: {len(prompts) - same}/{len(prompts)} rows differ from HF's (numerical near-ties)")
    return tokens / statistics.median(ours), tokens / statistics.median(hf), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    add_json_arg(parser)
    args = parser.parse_args()
    report = Report("generation_throughput", args)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device}" + ("" if device.type == "cuda" else f", {torch.get_num_threads()} threads")
          + f", {args.new_tokens} new tokens, median of {args.repeats} runs\n")
    rows = []
    for name, sizes in MODELS.items():
        torch.manual_seed(0)
        config = LlamaConfig(**sizes, max_position_embeddings=512, bos_token_id=1, eos_token_id=None,
                             pad_token_id=0)
        model = AutoModelForCausalLM.from_config(config).to(device).eval()
        model.generation_config.eos_token_id = None  # HF would otherwise stop rows at EOS
        n_params = sum(p.numel() for p in model.parameters())
        generator = torch.Generator().manual_seed(0)
        for batch in args.batches:
            lengths = torch.randint(8, 48, (batch,), generator=generator).tolist()
            prompts = [torch.randint(3, sizes["vocab_size"], (n,), generator=generator).tolist() for n in lengths]
            label = f"{name} ({n_params / 1e6:.1f}M)"
            ours_tps, hf_tps, tokens = measure(model, prompts, args.new_tokens, device, [], args.repeats)
            rows.append((label, batch, "none", tokens / batch, ours_tps, hf_tps))
            if batch > 1:
                _, greedy = time_ours(model, prompts, args.new_tokens, device, [])
                stop_ids = spread_stop_ids(greedy)
                ours_tps, hf_tps, tokens = measure(model, prompts, args.new_tokens, device, stop_ids, args.repeats)
                rows.append((label, batch, "spread", tokens / batch, ours_tps, hf_tps))

    report.table(["model", "batch", "stops", "mean len", "ours tok/s", "HF generate tok/s", "ours/HF"],
                 [[label, batch, stops, f"{mean_len:.1f}", f"{ours_tps:.0f}", f"{hf_tps:.0f}",
                   f"{ours_tps / hf_tps:.2f}x"] for label, batch, stops, mean_len, ours_tps, hf_tps in rows],
                 align=["---", "---:", "---", "---:", "---:", "---:", "---:"])
    for batch in args.batches:  # the smallest ours/HF over model sizes and stop patterns, per batch size
        ratios = [ours_tps / hf_tps for _, b, _, _, ours_tps, hf_tps in rows if b == batch]
        report.put(**{f"min_ratio_batch{batch}": min(ratios)})
    report.write()


if __name__ == "__main__":
    main()
