"""`chatforge STAGE --config FILE key=value ...`: one CLI over every stage's config dataclass.

Each command is a module with a `Config` dataclass and `run(cfg)`. `--name value` is the same as
`name=value`, so `chatforge generate --model DIR --prompt "Hi"` works too.
"""

from __future__ import annotations

import importlib
import sys

from chatforge.config import config_help, load_config
from chatforge.errors import ChatforgeError

COMMANDS = {
    "curate": ("chatforge.stages.curate", "curate raw documents: dedup (exact, MinHash-LSH), quality filter, mixture weights"),
    "world": ("chatforge.stages.world", "write the built-in world: corpus, demonstrations, prompts, gold facts"),
    "tokenizer": ("chatforge.stages.tokenizer", "train a byte-level BPE tokenizer with chat special tokens"),
    "pretrain": ("chatforge.stages.pretrain", "pretrain (or continue) a decoder-only causal LM"),
    "sft": ("chatforge.stages.sft", "supervised fine-tuning on demonstrations, keeping the best epoch (answer score or val loss)"),
    "rank": ("chatforge.stages.rank", "comparisons for the RM: K samples a prompt, ranked by simulated labelers"),
    "rm": ("chatforge.stages.rm", "train a reward model on ranked comparisons (K-wise ranking loss)"),
    "dpo": ("chatforge.stages.dpo", "direct preference optimisation of the policy on ranked comparisons, no reward model"),
    "ppo": ("chatforge.stages.ppo", "RLHF: PPO(-ptx) of the policy against a reward model, with a critic and a KL penalty"),
    "rejection_sampling": ("chatforge.stages.rejection_sampling",
                           "rejection-sampling fine-tuning: SFT on the best of n policy samples, round after round"),
    "online_dpo": ("chatforge.stages.online_dpo", "online DPO: DPO on ranked pairs of the current policy's samples, "
                                                  "round after round"),
    "iterate": ("chatforge.stages.iterate", "iterated RLHF: sample the policy, rank, retrain the RM, PPO again; N rounds"),
    "generate": ("chatforge.stages.generate", "sample from any causal-LM folder (greedy, beam, sampling)"),
    "chat": ("chatforge.stages.chat", "chat with a model in the terminal (multi-turn, streamed replies)"),
    "serve": ("chatforge.stages.serve", "serve a chat model: OpenAI-compatible /v1/chat/completions and a chat page"),
    "eval": ("chatforge.stages.evaluate", "compare a checkpoint with a baseline: win rate, reward, KL, perplexity, best-of-n"),
    "label": ("chatforge.stages.label", "labeling web app for human feedback: label serve | create-job | add-labeler | export"),
    "compare": ("chatforge.compare", "every method (PPO, GRPO, RLOO, DPO, ...) from one SFT model, gold-judged: "
                                     "leaderboard.{json,md}"),
    "demo": ("chatforge.demo", "the built-in end-to-end run on CPU -> runs/demo/report.{md,json} "
                               "(report_only=true: only the report, of a chain run by commands)"),
}


def usage() -> str:
    lines = ["usage: chatforge COMMAND [--config FILE] [key=value ...] [--key value ...]", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    lines += [f"  {name:<{width}} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`chatforge COMMAND --help` lists the command's config fields."]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """Split argv into (config file, key=value overrides, help wanted)."""
    config_file, overrides, want_help = None, [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            want_help = True
        elif arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                config_file = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                config_file = argv[i + 1]
                i += 1
            else:
                raise ChatforgeError("command line: --config needs a file")
        elif arg.startswith("--"):
            key = arg[2:].replace("-", "_")
            if "=" in key:
                overrides.append(key)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                overrides.append(f"{key}={argv[i + 1]}")
                i += 1
            else:
                overrides.append(f"{key}=true")
        elif "=" in arg:
            overrides.append(arg)
        else:
            raise ChatforgeError(f"command line: unexpected argument '{arg}' (use key=value)")
        i += 1
    return config_file, overrides, want_help


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    config_cls, entry, text = getattr(module, "Config", None), getattr(module, "run", None), COMMANDS[name][1]
    actions = getattr(module, "ACTIONS", None)  # a command with sub-actions: `chatforge label serve ...`
    if actions is not None:
        if not rest or rest[0] not in actions:
            listing = "\n".join(f"  {action:<12} {line}" for action, (_, _, line) in actions.items())
            asked = not rest or rest[0] in ("-h", "--help")
            print(("" if asked else f"error: unknown action '{rest[0]}'\n\n")
                  + f"usage: chatforge {name} ACTION [--config FILE] [key=value ...]\n\nactions:\n{listing}\n\n"
                  f"`chatforge {name} ACTION --help` lists the action's config fields.",
                  file=sys.stdout if asked else sys.stderr)
            return 0 if asked else 2
        config_cls, entry, text = actions[rest[0]]
        name, rest = f"{name} {rest[0]}", rest[1:]
    cfg = None
    try:
        config_file, overrides, want_help = parse_args(rest)
        if want_help:
            print(f"chatforge {name}: {text}\n\n{(module.__doc__ or '').strip()}\n\nconfig fields:")
            print(config_help(config_cls))
            return 0
        cfg = load_config(config_cls, config_file, overrides)
        entry(cfg)
    except ChatforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from chatforge.guards import is_out_of_memory, out_of_memory_advice

        if not is_out_of_memory(exc):
            raise
        print(f"error: {out_of_memory_advice(name, cfg)}\n({type(exc).__name__}: {str(exc)[:300]})", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
