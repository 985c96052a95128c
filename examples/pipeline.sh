#!/usr/bin/env bash
# `make demo` as plain commands: one `chatforge` command per stage, with the demo's configs and the paths it
# fills in, then the demo's report card of the run folder. On the same machine the report.json numbers are
# those of `make demo` (wall times aside): the stages and the report are the same code.
#
#   bash examples/pipeline.sh [RUN_DIR]          # default runs/pipeline; about as long as `make demo`
#
# Extra space-separated key=value overrides per stage go in WORLD_ARGS, TOKENIZER_ARGS, PRETRAIN_ARGS, SFT_ARGS,
# RANK_ARGS, RM_ARGS, PPO_ARGS (both PPO runs) and REPORT_ARGS (`chatforge demo` keys, e.g. eval_prompts=20
# eval.samples_per_prompt=1). CHATFORGE is the command to run (default: chatforge; e.g. .venv/bin/chatforge).
# Like `make demo`, every command uses torch's default number of CPU threads (OMP_NUM_THREADS sets it for both):
# sums split over another number of threads can change the last digits of the numbers.
set -euo pipefail

RUN="${1:-runs/pipeline}"
CHATFORGE="${CHATFORGE:-chatforge}"
WORLD="$RUN/world"

# the built-in world: facts, pretraining corpus, demonstrations, prompts, simulated labelers
$CHATFORGE world --config configs/world.yaml out_dir="$WORLD" ${WORLD_ARGS:-}

$CHATFORGE tokenizer --config configs/tokenizer.yaml corpus="[$WORLD/corpus/train.jsonl]" \
    out_dir="$RUN/tokenizer" ${TOKENIZER_ARGS:-}

$CHATFORGE pretrain --config configs/pretrain_tiny.yaml corpus="[$WORLD/corpus/train.jsonl]" \
    val_corpus="[$WORLD/corpus/val.jsonl]" tokenizer="$RUN/tokenizer" out_dir="$RUN/pretrain" ${PRETRAIN_ARGS:-}

# SFT scores its epochs' answers on the held-out prompts 201-400 (the report card scores the first 200)
$CHATFORGE sft --config configs/sft_tiny.yaml model="$RUN/pretrain/final" train_data="[$WORLD/demos/train.jsonl]" \
    val_data="[$WORLD/demos/val.jsonl]" eval_prompts="$WORLD/prompts/eval.jsonl" eval_skip=200 eval_max_prompts=200 \
    gold_world="$WORLD" out_dir="$RUN/sft" ${SFT_ARGS:-}

# the reward model's comparisons: samples of the SFT model ranked by the world's simulated labelers
$CHATFORGE rank --config configs/rank.yaml model="$RUN/sft/best" world="$WORLD" prompts="$WORLD/prompts/rl.jsonl" \
    out_dir="$RUN/comparisons" ${RANK_ARGS:-}

# labeler sim-4, the last of rank.yaml's five, never trains the RM: its accuracy on sim-4 is reported apart
$CHATFORGE rm --config configs/rm_tiny.yaml model="$RUN/sft/best" train_data="[$RUN/comparisons/train.jsonl]" \
    val_data="[$RUN/comparisons/val.jsonl]" holdout_labelers="[sim-4]" gold_world="$WORLD" out_dir="$RUN/rm" \
    ${RM_ARGS:-}

# RLHF twice: plain PPO (ptx_coef 0), then PPO-ptx (ppo_tiny.yaml's ptx_coef)
ppo_inputs=(policy="$RUN/sft/best" reward_model="$RUN/rm/final" prompts="$WORLD/prompts/rl.jsonl"
            pretrain_data="[$WORLD/corpus/train.jsonl]" gold_world="$WORLD")
$CHATFORGE ppo --config configs/ppo_tiny.yaml "${ppo_inputs[@]}" out_dir="$RUN/ppo" ${PPO_ARGS:-} ptx_coef=0
$CHATFORGE ppo --config configs/ppo_tiny.yaml "${ppo_inputs[@]}" out_dir="$RUN/ppo_ptx" ${PPO_ARGS:-}

# the report card: base model facts and few-shot answers, every model's greedy answers gold-scored, `chatforge eval`
# of both policies against SFT (win rates, best-of-n, perplexity, KL) -> $RUN/report.md, report.json
$CHATFORGE demo --config configs/demo.yaml run_dir="$RUN" report_only=true ${REPORT_ARGS:-}
