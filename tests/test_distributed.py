"""Scale-out: every training stage under torchrun with 2 CPU processes (gloo), against one process.

One torchrun launch runs pretraining (DDP, then FSDP2), SFT, the reward model and PPO one after another
(tests/torchrun_stages.py): on 2 cores a launch's start-up costs more than the tiny stages themselves.
Pretraining, SFT and the RM must give the same per-step losses as one process with the same global
batch, within RTOL; PPO must run both ranks to the end and write one final/ folder.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chatforge import distributed as dist
from chatforge.cli import main
from chatforge.data.jsonl import write_jsonl
from chatforge.errors import ChatforgeError
from chatforge.metrics import read_metrics
from chatforge.runtime import enable_gradient_checkpointing, on_device

# gloo adds the two ranks' gradients in another order than one process does; measured: ~5e-7 relative
# after 10 steps (Adam amplifies nothing at this scale), so 1e-4 leaves room and still catches a wrong
# batch (a different batch moves the loss by > 1e-3 here)
RTOL = 1e-4
TINY = "model_overrides={num_hidden_layers: 2, hidden_size: 32, intermediate_size: 64, num_attention_heads: 4}"
COMMON = ["device=cpu", "num_threads=1", "tensorboard=false", "log_every=1"]


def pretrain_args(corpus, tokenizer_dir, out_dir, *extra):
    train, val = corpus
    return ["pretrain", f"corpus=[{train}]", f"val_corpus=[{val}]", f"tokenizer={tokenizer_dir}", f"out_dir={out_dir}",
            TINY, "seq_len=32", "batch_size=8", "grad_accum=2", "max_steps=6", "warmup_steps=2", "eval_every=3",
            "val_tokens=2048", "save_every=3", "shuffle_buffer=64", *COMMON, *extra]


def pretrain_and_resume(corpus, tokenizer_dir, out_dir, *extra):
    """6 steps, then the same command with max_steps=8: it resumes from the step-6 checkpoint."""
    return [pretrain_args(corpus, tokenizer_dir, out_dir, *extra),
            pretrain_args(corpus, tokenizer_dir, out_dir, *extra, "max_steps=8")]


def sft_args(world_dir, base, out_dir):
    return ["sft", f"model={base}", f"train_data=[{world_dir}/demos/train.jsonl]", f"val_data=[{world_dir}/demos/val.jsonl]",
            f"out_dir={out_dir}", "epochs=1", "batch_size=8", "learning_rate=3e-3", "max_len=128",
            f"eval_prompts={world_dir}/prompts/eval.jsonl", "eval_max_prompts=4", f"gold_world={world_dir}",
            "eval_max_new_tokens=8", *COMMON]


def rm_args(base, comparisons, out_dir):
    train, val = comparisons
    return ["rm", f"model={base}", f"train_data=[{train}]", f"val_data=[{val}]", f"out_dir={out_dir}", "batch_prompts=8",
            "learning_rate=1e-3", "max_len=128", *COMMON]


def ppo_args(world_dir, policy, reward_model, out_dir):
    return ["ppo", f"policy={policy}", f"reward_model={reward_model}", f"prompts={world_dir}/prompts/rl.jsonl",
            f"pretrain_data=[{world_dir}/corpus/train.jsonl]", f"out_dir={out_dir}", "steps=2", "rollout_batch=8",
            "minibatch_size=4", "ppo_epochs=2", "max_new_tokens=10", "learning_rate=1e-3", "critic_learning_rate=1e-3",
            "ptx_coef=0.5", "ptx_batch_size=2", "ptx_seq_len=64", f"gold_world={world_dir}", "save_every=1",
            "offload_frozen=true", "gradient_checkpointing=true", *COMMON]


@pytest.fixture(scope="module")
def comparisons(tiny_world_base, tmp_path_factory):
    """Ranked comparisons of flawed responses from the tiny world (no model needed)."""
    from chatforge.world import render
    from chatforge.world.facts import World
    from chatforge.world.gold import GoldScorer
    from chatforge.world.labeler import label_pools
    from chatforge.world.tasks import all_tasks

    world = World.load(tiny_world_base[0] / "world.json")
    pools = render.response_pools(world, all_tasks(world), 80, random.Random(0), k_range=(2, 4))
    pools = [(p, list(dict.fromkeys(r))) for p, r in pools if len(set(r)) >= 2]
    records, _ = label_pools(GoldScorer(world), pools, n_labelers=3, agreement=0.9)
    root = tmp_path_factory.mktemp("dist_comparisons")
    write_jsonl(root / "train.jsonl", records[16:])
    write_jsonl(root / "val.jsonl", records[:16])
    return root / "train.jsonl", root / "val.jsonl"


@pytest.fixture(scope="module")
def two_ranks(toy_corpus, toy_tokenizer_dir, tiny_world_base, comparisons, tmp_path_factory):
    """The run folder of one `torchrun --standalone --nproc_per_node 2` launch over every stage."""
    world_dir, base = tiny_world_base
    root = tmp_path_factory.mktemp("two_ranks")
    plan = [*pretrain_and_resume(toy_corpus, toy_tokenizer_dir, root / "pretrain"),
            *pretrain_and_resume(toy_corpus, toy_tokenizer_dir, root / "pretrain_fsdp", "distributed_strategy=fsdp"),
            sft_args(world_dir, base, root / "sft"),
            rm_args(base, comparisons, root / "rm"),
            ppo_args(world_dir, base, root / "rm" / "final", root / "ppo"),
            [*ppo_args(world_dir, base, root / "rm" / "final", root / "grpo"), "algorithm=grpo", "group_size=2"]]
    (root / "plan.json").write_text(json.dumps([[str(a) for a in argv] for argv in plan]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).parent / "torchrun_stages.py"), str(root / "plan.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return root


def losses(run_dir, key="train/loss"):
    return [(m["step"], m[key]) for m in read_metrics(run_dir) if key in m]


def assert_same_curve(one, two):
    assert [s for s, _ in two] == [s for s, _ in one]  # rank 0 alone wrote metrics: each step once
    assert [v for _, v in two] == pytest.approx([v for _, v in one], rel=RTOL)


@pytest.mark.slow
def test_pretrain_two_ranks_match_one_process_and_resume(two_ranks, toy_corpus, toy_tokenizer_dir, tmp_path):
    for argv in pretrain_and_resume(toy_corpus, toy_tokenizer_dir, tmp_path / "one"):
        assert main(argv) == 0
    one = losses(tmp_path / "one")
    assert len(one) == 8 and one[-1][1] < one[0][1]
    for strategy in ("pretrain", "pretrain_fsdp"):  # DDP, and FSDP2 (weights sharded over the 2 ranks)
        # steps 7-8 come after every rank loaded the step-6 checkpoint (under FSDP2: the gathered optimizer state)
        assert_same_curve(one, losses(two_ranks / strategy))
        assert_same_curve(losses(tmp_path / "one", "val/loss"), losses(two_ranks / strategy, "val/loss"))
        assert (two_ranks / strategy / "final" / "model.safetensors").exists()
        assert sorted(p.name for p in (two_ranks / strategy / "checkpoints").iterdir()) == ["step_0000006", "step_0000008"]


@pytest.mark.slow
def test_sft_and_rm_two_ranks_match_one_process(two_ranks, tiny_world_base, comparisons, tmp_path):
    world_dir, base = tiny_world_base
    assert main(sft_args(world_dir, base, tmp_path / "sft")) == 0
    # uneven shares: packed rows hold different numbers of assistant tokens, so the ranks' losses are weighted
    assert_same_curve(losses(tmp_path / "sft"), losses(two_ranks / "sft"))
    one, two = (json.loads((d / "sft" / "summary.json").read_text()) for d in (tmp_path, two_ranks))
    assert two["epochs"][0]["val_loss"] == pytest.approx(one["epochs"][0]["val_loss"], rel=RTOL)
    assert two["epochs"][0]["score"] == pytest.approx(one["epochs"][0]["score"])  # answers sharded, scores reduced
    assert main(rm_args(base, comparisons, tmp_path / "rm")) == 0
    assert_same_curve(losses(tmp_path / "rm"), losses(two_ranks / "rm"))
    assert_same_curve(losses(tmp_path / "rm", "train/accuracy"), losses(two_ranks / "rm", "train/accuracy"))


@pytest.mark.slow
def test_ppo_two_ranks_run_to_the_end(two_ranks):
    from transformers import AutoModelForCausalLM

    metrics = read_metrics(two_ranks / "ppo")
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[0]["rollout/tokens"] > 0 and "rollout/gold_score" in metrics[0] and "train/ptx_loss" in metrics[0]
    assert [p.name for p in two_ranks.joinpath("ppo").iterdir() if p.name.startswith("final")] == ["final"]
    AutoModelForCausalLM.from_pretrained(two_ranks / "ppo" / "final")
    assert (two_ranks / "ppo" / "checkpoints" / "step_0000002" / "critic" / "config.json").exists()
    assert json.loads((two_ranks / "ppo" / "summary.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_grpo_two_ranks_run_to_the_end(two_ranks):
    """GRPO's groups (8 responses: 4 prompts x 2, 2 prompts a rank) with no critic under DDP."""
    metrics = read_metrics(two_ranks / "grpo")
    assert [m["step"] for m in metrics] == [1, 2] and "train/kl_loss" in metrics[-1]
    assert "train/value_loss" not in metrics[-1]
    checkpoint = two_ranks / "grpo" / "checkpoints" / "step_0000002"
    assert (checkpoint / "model.safetensors").exists() and not (checkpoint / "critic").exists()
    assert json.loads((two_ranks / "grpo" / "summary.json").read_text())["algorithm"] == "grpo"


def test_single_process_helpers_change_nothing():
    """Without torchrun every helper is the identity, so a single-process run computes what it did before."""
    model = torch.nn.Linear(2, 2)
    items = [3, 1, 4, 1, 5]
    assert not dist.is_distributed() and dist.world_size() == 1 and dist.is_main()
    assert dist.wrap(model) is model and dist.shard(items) is items and dist.share(items) == (items, 1.0)
    assert dist.rank_seed(5) == 5
    values = torch.randn(3, 4)
    assert dist.all_reduce_mean(2.5) == 2.5 and dist.all_reduce_sum((1, 2)) == (1, 2) and dist.all_gather(values) is values
    mask = (torch.rand(3, 4) > 0.3).float()
    from chatforge.losses import whiten

    assert torch.equal(dist.whiten_across_ranks(values, mask), whiten(values, mask))


def test_shards_split_a_batch_without_overlap(monkeypatch):
    """Each of 3 ranks takes every third item; shares' weights make the ranks' average the mean over all items."""
    items = list(range(8))
    shares, weights = [], []
    for rank in range(3):
        monkeypatch.setattr(dist, "is_distributed", lambda: True)
        monkeypatch.setattr(dist, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(dist, "world_size", lambda: 3)
        mine, weight = dist.share(items, count=lambda item: item + 1)  # item i "holds" i + 1 tokens
        shares.append(mine)
        weights.append(weight)
    assert sorted(sum(shares, [])) == items and shares[1] == [1, 4, 7]
    assert dist.rank_seed(5) != 5  # (rank 2 here) ranks sample with seeds of their own
    # the mean over ranks of (weight * mean token value of the share) is the mean over all tokens
    per_rank = [w * sum(i * (i + 1) for i in s) / sum(i + 1 for i in s) for w, s in zip(weights, shares)]
    assert sum(per_rank) / 3 == pytest.approx(sum(i * (i + 1) for i in items) / sum(i + 1 for i in items))
    monkeypatch.setattr(dist, "rank", lambda: 2)
    assert dist.share([10, 11], count=None) == ([10], 0.0)  # a rank left without items runs one, weighted 0


def test_global_batches_must_split_evenly(toy_corpus, toy_tokenizer_dir, monkeypatch):
    from chatforge.stages import pretrain

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ChatforgeError, match="batch_size' = 16 is the global batch and must be a multiple of the 3"):
        dist.check_divisible("pretrain", "batch_size", 16)
    dist.check_divisible("pretrain", "batch_size", 18)
    cfg = pretrain.Config(corpus=[str(toy_corpus[0])], tokenizer=str(toy_tokenizer_dir), batch_size=16)
    with pytest.raises(ChatforgeError, match="WORLD_SIZE"):
        cfg.validate()
    with pytest.raises(ChatforgeError, match="distributed_strategy"):
        dist.check_strategy("zero3", "sft")


def tiny_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32))


@pytest.mark.parametrize("in_eval_mode", [False, True])
def test_gradient_checkpointing_stores_fewer_activations_and_keeps_the_gradients(in_eval_mode):
    ids = torch.randint(0, 50, (2, 12))
    grads, saved = [], []
    for checkpointing in (False, True):
        model = tiny_llama()
        model.eval() if in_eval_mode else model.train()
        if checkpointing:
            enable_gradient_checkpointing(model, in_eval_mode=in_eval_mode)
        count = [0]  # tensors the forward pass keeps for the backward pass

        def pack(tensor):
            count[0] += 1
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        saved.append(count[0])
    assert saved[1] < saved[0] / 2, saved  # the blocks' activations are recomputed in the backward pass instead
    torch.testing.assert_close(grads[1], grads[0])
    if in_eval_mode:
        assert not model.model.layers[0].mlp.training  # dropout and the like stay in eval mode


def test_offload_moves_a_frozen_model_only_for_its_forward_pass():
    moves = []

    class Recorder:
        def to(self, device):
            moves.append(str(device))
            return self

    gpu = torch.device("cuda", 0)  # never touched: Recorder only records
    with on_device(Recorder(), gpu, offload=True):
        assert moves == ["cuda:0"]
    assert moves == ["cuda:0", "cpu"]
    with on_device(Recorder(), gpu, offload=False), on_device(Recorder(), torch.device("cpu"), offload=True):
        pass
    assert moves == ["cuda:0", "cpu"]  # without offload, or on a CPU run, nothing moves
