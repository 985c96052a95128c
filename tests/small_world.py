"""The shrunken world of the end-to-end tests (test_demo.py, test_compare_command.py): every stage in a few minutes."""

from pathlib import Path

# the shrunken world: every stage of the chain in a few minutes; per stage, its overrides
SMALL = {"world": ["n_people=8", "n_towns=4", "train_docs=600", "val_docs=40", "train_demos=200", "val_demos=20",
                   "rl_prompts=60", "eval_prompts=40", "calibration_prompts=40"],
         "tokenizer": ["vocab_size=512"],
         "pretrain": ["max_steps=40", "eval_every=20", "save_every=20", "batch_size=8", "seq_len=128"],
         "sft": ["epochs=2", "max_len=128"], "rank": ["max_prompts=60"], "rm": ["max_len=128"],
         "ppo": ["steps=3", "rollout_batch=8", "minibatch_size=4", "ptx_seq_len=64"],
         "eval": ["samples_per_prompt=1", "ppl_tokens=1024"]}
SMALL_DEMO = ["eval_prompts=20", "select_prompts=20", "best_of_n=2"]  # the demo's own keys
# one torch thread in the demo (earlier tests may have set another count in this process) and in every command of
# the pipeline: a sum over a different number of threads can change the last digits of a number
THREADS = 1
REPO = Path(__file__).resolve().parents[1]
