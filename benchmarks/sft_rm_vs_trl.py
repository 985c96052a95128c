"""SFT and reward-model training speed: chatforge's stages against TRL's SFTTrainer and RewardTrainer.

Same tiny Llama (the demo's `tiny` preset, random init), same built-in-world data, same batch size,
one epoch, CPU in fp32 (TRL's configs default to bf16 autocast, switched off here as ours runs fp32 on
CPU). Each run is timed whole (data preparation + training, model load excluded for both)
and repeated; medians are printed with the ratio ours / TRL.

  SFT: tokens/s = tokens of the tokenized chats / seconds, packed (TRL packing="bfd") and unpacked.
  RM:  preference pairs/s and response tokens/s, on pairs (chosen/rejected, both trainers) and on
       K = 4 rankings (ours scores each response once; TRL needs the C(4,2) = 6 pairs expanded).

TRL lives in the benchmark's own environment, never in chatforge's:
    bash benchmarks/setup_trl_env.sh
    benchmarks/.venv-trl/bin/python benchmarks/sft_rm_vs_trl.py [--repeats 3] [--demos 1500]
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from chatforge.data.chat import tokenize_chat  # noqa: E402
from chatforge.data.jsonl import read_jsonl, write_jsonl  # noqa: E402
from chatforge.models.presets import llama_config  # noqa: E402
from chatforge.stages import rm, sft  # noqa: E402
from chatforge.stages import tokenizer as tokenizer_stage  # noqa: E402
from chatforge.world import render  # noqa: E402
from chatforge.stages import world as world_stage  # noqa: E402
from chatforge.world.facts import World  # noqa: E402
from chatforge.world.gold import GoldScorer  # noqa: E402
from chatforge.world.labeler import label_pools  # noqa: E402
from chatforge.world.tasks import all_tasks  # noqa: E402

from _table import Report, add_json_arg  # noqa: E402  (benchmarks/, the script's own folder)

BATCH = 8
MAX_LEN = 256
LR = 1e-3


def prepare(root: Path, n_demos: int, n_rankings: int):
    """World data, a tokenizer, a random tiny model folder, and comparison files (K = 4 and pairs)."""
    world_dir = world_stage.run(world_stage.Config(out_dir=root / "world", train_docs=2000, val_docs=50,
                                                   train_demos=n_demos, val_demos=10, rl_prompts=10,
                                                   eval_prompts=10, calibration_prompts=50))
    tok_dir = tokenizer_stage.run(tokenizer_stage.Config(corpus=[str(world_dir / "corpus" / "train.jsonl")],
                                                         out_dir=str(root / "tok"), vocab_size=2048))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    config = llama_config("tiny", vocab_size=len(tokenizer), max_position_embeddings=MAX_LEN,
                          bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model_dir = root / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    world = World.load(world_dir / "world.json")
    pools = render.response_pools(world, all_tasks(world), n_rankings * 2, random.Random(0), k_range=(4, 4))
    pools = [(p, list(dict.fromkeys(r))) for p, r in pools if len(set(r)) == 4][:n_rankings]
    rankings, _ = label_pools(GoldScorer(world), pools, n_labelers=1, agreement=0.73)
    pairs = [{"prompt": r["prompt"], "chosen": r["responses"][i], "rejected": r["responses"][j]}
             for r in rankings for i, j in itertools.combinations(range(4), 2)]
    k4_file = root / "rankings_k4.jsonl"
    pairs_file = root / "pairs.jsonl"
    write_jsonl(k4_file, rankings)
    write_jsonl(pairs_file, pairs)
    return world_dir, model_dir, tokenizer, k4_file, pairs_file, rankings, pairs


def demo_messages(world_dir: Path) -> list[list[dict]]:
    records = read_jsonl(world_dir / "demos" / "train.jsonl")
    return [r["messages"] if "messages" in r else
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
            for r in records]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ours_sft(model_dir, world_dir, out: Path, packing: bool):
    cfg = sft.Config(model=str(model_dir), train_data=[str(world_dir / "demos" / "train.jsonl")], out_dir=str(out),
                     epochs=1, batch_size=BATCH, learning_rate=LR, max_len=MAX_LEN, packing=packing,
                     log_every=1000, tensorboard=False, resume=False)
    return timed(lambda: sft.run(cfg))


def trl_sft(model_dir, tokenizer, messages, out: Path, packing: bool):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=1, learning_rate=LR,
                     max_length=MAX_LEN, packing=packing, assistant_only_loss=True, save_strategy="no",
                     report_to="none", use_cpu=True, bf16=False, logging_steps=1000, disable_tqdm=True, dataloader_num_workers=0)

    def train():
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"messages": m} for m in messages]),
                             processing_class=tokenizer)
        trainer.train()
    return timed(train)


def ours_rm(model_dir, data_file, out: Path, batch_prompts: int):
    cfg = rm.Config(model=str(model_dir), train_data=[str(data_file)], out_dir=str(out), epochs=1,
                    batch_prompts=batch_prompts, learning_rate=LR, max_len=MAX_LEN, log_every=1000, tensorboard=False)
    return timed(lambda: rm.run(cfg))


def trl_rm(model_dir, tokenizer, pairs, out: Path):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=1, learning_rate=LR,
                        max_length=MAX_LEN, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
                        logging_steps=1000,
                        disable_tqdm=True, dataloader_num_workers=0)
    rows = [{"chosen": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["rejected"]}]}
            for p in pairs]

    def train():
        RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer).train()
    return timed(train)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demos", type=int, default=1500)
    parser.add_argument("--rankings", type=int, default=250)
    add_json_arg(parser)
    args = parser.parse_args()
    report = Report("sft_rm_vs_trl", args)
    import transformers
    import trl

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world_dir, model_dir, tokenizer, k4_file, pairs_file, rankings, pairs = prepare(root, args.demos, args.rankings)
        messages = demo_messages(world_dir)
        sft_tokens = sum(len(tokenize_chat(tokenizer, m).input_ids) for m in messages)

        def response_tokens(items):
            return sum(len(tokenize_chat(tokenizer, [{"role": "user", "content": p},
                                                     {"role": "assistant", "content": r}]).input_ids)
                       for p, responses in items for r in responses)
        k4_tokens = response_tokens([(r["prompt"], r["responses"]) for r in rankings])
        pair_tokens = response_tokens([(p["prompt"], [p["chosen"], p["rejected"]]) for p in pairs])

        runs = {
            "sft packed": (lambda i: ours_sft(model_dir, world_dir, root / f"o_sp{i}", True),
                           lambda i: trl_sft(model_dir, tokenizer, messages, root / f"t_sp{i}", True)),
            "sft unpacked": (lambda i: ours_sft(model_dir, world_dir, root / f"o_su{i}", False),
                             lambda i: trl_sft(model_dir, tokenizer, messages, root / f"t_su{i}", False)),
            "rm pairs": (lambda i: ours_rm(model_dir, pairs_file, root / f"o_rp{i}", BATCH),
                         lambda i: trl_rm(model_dir, tokenizer, pairs, root / f"t_rp{i}")),
            # ours on the K = 4 rankings (2 rankings = 12 pairs a step) vs TRL on the same rankings as 6 pairs each
            "rm K=4 rankings": (lambda i: ours_rm(model_dir, k4_file, root / f"o_rk{i}", 2),
                                lambda i: trl_rm(model_dir, tokenizer, pairs, root / f"t_rk{i}")),
        }
        seconds = {name: ([], []) for name in runs}
        for i in range(args.repeats):  # interleaved, so drifts in machine load hit both sides alike
            for name, (ours, theirs) in runs.items():
                seconds[name][0].append(ours(i))
                seconds[name][1].append(theirs(i))

    print(f"\nchatforge vs TRL {trl.__version__} (transformers {transformers.__version__}, torch {torch.__version__}), "
          f"CPU {torch.get_num_threads()} threads; tiny Llama, batch {BATCH}, max_len {MAX_LEN}, 1 epoch, "
          f"median of {args.repeats}\n")
    n_pairs, rows, speedup = len(pairs), [], {}
    for name, (ours_s, trl_s) in seconds.items():
        o, t = statistics.median(ours_s), statistics.median(trl_s)
        if name.startswith("sft"):
            data, rate_o, rate_t, unit = f"{len(messages)} chats, {sft_tokens:,} tokens", sft_tokens / o, sft_tokens / t, "tok/s"
        elif name == "rm pairs":
            data, rate_o, rate_t, unit = f"{n_pairs} pairs", n_pairs / o, n_pairs / t, "pairs/s"
        else:
            data, rate_o, rate_t, unit = (f"{len(rankings)} rankings = {n_pairs} pairs; tokens scored: ours "
                                          f"{k4_tokens:,}, TRL {pair_tokens:,}"), n_pairs / o, n_pairs / t, "pairs/s"
        rows.append([name, data, f"{o:.1f}", f"{t:.1f}", f"{rate_o:,.0f} {unit}", f"{rate_t:,.0f} {unit}", f"{t / o:.2f}x"])
        speedup[name] = t / o
    report.table(["run", "data", "ours s", "TRL s", "ours rate", "TRL rate", "ours / TRL"], rows)
    report.put(speedup=speedup)  # TRL seconds / ours, per run
    report.write()


if __name__ == "__main__":
    main()
