"""Stage 5: RLHF with PPO-ptx. Four roles:

    actor      the policy being trained, starts as the SFT model
    critic     per-token values, starts as the reward model (its scalar head read at every token)
    reference  the frozen SFT model, for the per-token KL penalty
    reward     the frozen reward model, read at the last token of each response

Each step: sample one response per prompt for `rollout_batch` RL prompts (temperature 1 by default)
-> score them: the policy's and the reference's logprobs, the critic's values, the RM's reward
(normalised by the mean/std of rewards of SFT samples measured before training; minus a penalty if
the response never ended; reward_source = gold puts the built-in world's gold judge in the RM's place,
an oracle run; reward_source = fn a Python reward function alone (chatforge/reward_fn.py); a reward_fn
beside rm/gold adds reward_fn_weight * its score after the normalisation) -> per-token rewards
-beta * (log pi - log pi_ref), with the score added at the last token -> GAE advantages, whitened
-> `ppo_epochs` passes of minibatches with the clipped policy loss + ptx_coef * the pretraining LM loss
(PPO-ptx; ptx_coef 0 is plain PPO) for the actor, and the clipped value loss for the critic. Dropout is
off in every role (all models stay in eval mode), padding is masked out of every loss, and beta is fixed
or adapted to a target KL.

algorithm = grpo | rloo | reinforce_pp drops the critic (none is loaded, trained or saved) and samples
group_size responses per prompt: the advantage is the KL-penalised return normalised within its prompt's
group (GRPO), minus the mean of the group's other returns (RLOO), or the return-to-go whitened over the
batch (REINFORCE++); the actor's loss stays the clipped surrogate (+ ptx). kl_in = loss moves the KL from
the rewards into the actor's loss as kl_coef * the k3 estimate (GRPO's default). Formulas: docs/ppo.md.

    out_dir/metrics.jsonl, tensorboard/   per step: reward, gold score, KL, entropy, clip fraction,
                                          losses, response length, tokens/s, time split
    out_dir/checkpoints/step_N/           the actor (HF folder; with LoRA the merged weights, so a resumed
                                          LoRA run starts fresh adapters on them) + critic/ (PPO) + optimizers,
                                          beta, reward normalisation and data positions
    out_dir/final/                        the trained policy (LoRA merged): a plain HF folder
    out_dir/summary.json                  first/last numbers and the reward normalisation
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch

from chatforge import distributed as dist
from chatforge.checkpoint import gather_rng_states, latest_checkpoint, load_trainer_state, save_checkpoint
from chatforge.config import opt, require_above_zero, require_positive, save_config, to_dict
from chatforge.data.chat import chat_prompt_ids
from chatforge.data.corpus import iter_documents
from chatforge.data.formats import read_prompts
from chatforge.data.packing import PackedBlocks
from chatforge.errors import ChatforgeError
from chatforge.eval.judges import load_judge
from chatforge.generation import SamplingParams, generate
from chatforge.guards import NonFiniteGuard
from chatforge.losses import (adaptive_kl_coef, gae, group_centered, grpo_advantages, k3_kl, kl_penalized_rewards,
                              masked_mean, policy_loss, returns_to_go, rloo_advantages, token_cross_entropy, value_loss)
from chatforge.metrics import MetricsLogger, progress_bar
from chatforge.models.card import model_card
from chatforge.models.io import (check_model_dir, check_same_tokenizer, check_tokenizer_fits, load_causal_lm,
                                 load_tokenizer, save_hf_folder)
from chatforge.models.reward import check_reward_model_dir, load_reward_model
from chatforge.models.scoring import (by_length, join_rollout, response_logprobs, response_logprobs_and_entropy,
                                      response_values, rollout_rewards)
from chatforge.models.templates import load_chat_tokenizer
from chatforge.models.trainable import configure_trainable, plain_model
from chatforge.optim import build_optimizer, warmup_cosine
from chatforge.reward_fn import RewardFn
from chatforge.runtime import autocast, enable_gradient_checkpointing, on_device, start_run


@dataclass
class Config:
    policy: str = opt("", "model folder the actor starts from (the SFT model, or the last round's policy)")
    reference: str = opt("", "frozen reference of the KL penalty ('' = policy); iterated RLHF keeps the SFT model here")
    reward_model: str = opt("", "reward-model folder (written by `chatforge rm`), frozen")
    reward_source: Literal["rm", "gold", "fn"] = opt(
        "rm", "what scores each response: the reward model; the built-in world's gold judge (needs gold_world): "
              "an oracle run, the most PPO gets from a perfect RM; or reward_fn alone. With gold or fn no reward "
              "model is loaded for scoring: reward_model (or critic) then only starts the critic")
    reward_fn: str = opt("", "a Python reward function 'package.module:function' or 'path/file.py:function': "
                             "(prompts as message lists, response strings) -> list[float]; with reward_source rm/gold "
                             "its score * reward_fn_weight is added to the (normalised) score; see docs/ppo.md")
    reward_fn_weight: float = opt(1.0, "weight of reward_fn's score (it is never normalised; 1 = as returned)")
    critic: str = opt("", "reward-model folder the critic starts from ('' = reward_model; unused by the critic-free "
                          "algorithms)")
    prompts: str = opt("", 'JSONL of {"prompt": ...} RL prompts (no responses needed)')
    pretrain_data: list[str] = opt([], "pretraining text (.jsonl/.txt/.parquet) for the ptx loss")
    out_dir: str = opt("runs/ppo", "run folder")
    steps: int = opt(100, "rollout batches (PPO iterations)")
    algorithm: Literal["ppo", "grpo", "rloo", "reinforce_pp"] = opt(
        "ppo", "how advantages are estimated: ppo (a critic and GAE); the critic-free grpo (the return normalised "
               "within its prompt's group), rloo (the return minus the mean of the group's other returns), "
               "reinforce_pp (return-to-go whitened over the batch); the critic-free ones load and train no critic")
    group_size: int = opt(0, "responses sampled per prompt (0 = the algorithm's: 4 for grpo and rloo, which need >= 2; "
                             "1 for ppo and reinforce_pp); rollout_batch / group_size prompts a step")
    kl_in: Literal["auto", "reward", "loss"] = opt(
        "auto", "where the KL to the reference goes: reward (a per-token penalty -kl_coef * (log pi - log pi_ref), "
                "as PPO), loss (kl_coef * the k3 estimate in the actor's loss, as GRPO's paper); auto = loss for grpo, "
                "reward for the others")
    rollout_batch: int = opt(64, "responses sampled per step (group_size for each of rollout_batch / group_size "
                                 "prompts), over all ranks (each of N: 1/N of the prompts)")
    max_new_tokens: int = opt(48, "longest response; a response cut here never ended and is penalised")
    temperature: float = opt(1.0, "sampling temperature of the rollouts (the logprobs use the same)")
    long_prompts: Literal["error", "drop"] = opt(
        "error", "a prompt with no room for max_new_tokens in the context: stop with an error, or drop it")
    ppo_epochs: int = opt(4, "passes over each rollout batch")
    minibatch_size: int = opt(16, "responses per PPO minibatch (one optimizer step each), over all ranks")
    learning_rate: float = opt(1e-5, "actor learning rate")
    critic_learning_rate: float = opt(1e-5, "critic learning rate")
    min_lr_ratio: float = opt(1.0, "final learning rate as a share of the peak (1 = constant, <1 = cosine decay)")
    weight_decay: float = opt(0.0, "AdamW weight decay on matrices")
    grad_clip: float = opt(1.0, "clip each model's gradient norm to this (0 = off)")
    kl_coef: float = opt(0.02, "beta: weight of the per-token KL penalty to the reference (InstructGPT: 0.02)")
    target_kl: float = opt(0.0, "adapt beta so the KL per response approaches this (0 = fixed beta)")
    kl_horizon: int = opt(10000, "horizon of the adaptive KL controller, in responses")
    discount: float = opt(1.0, "GAE's discount per token (gamma in the GAE paper); 1.0 = none within a response")
    lam: float = opt(0.95, "lambda of GAE")
    clip_range: float = opt(0.2, "PPO clip of the policy ratio")
    value_clip_range: float = opt(0.2, "clip of the critic's change from its rollout values")
    normalize_reward: bool = opt(True, "divide RM rewards by (subtract the mean of) rewards of SFT samples")
    missing_eos_penalty: float = opt(1.0, "subtracted from the (normalised) reward of a response that never ended")
    ptx_coef: float = opt(0.0, "PPO-ptx: weight of the pretraining LM loss in the actor's loss (0 = plain PPO)")
    ptx_batch_size: int = opt(8, "pretraining sequences per PPO minibatch, over all ranks")
    ptx_seq_len: int = opt(0, "tokens per pretraining sequence (0 = the model's context)")
    freeze_layers: int = opt(0, "freeze the actor's embeddings and this many lowest layers")
    lora_r: int = opt(0, "LoRA rank for the actor (0 = full fine-tuning); the saved policy has it merged")
    lora_alpha: float = opt(16.0, "LoRA alpha")
    lora_targets: str = opt("all-linear", "modules that get adapters (PEFT target_modules)")
    gold_world: str = opt("", "built-in world folder: log the gold score of every rollout batch")
    log_every: int = opt(1, "steps between progress-bar updates of the metrics (every step is logged)")
    save_every: int = opt(50, "steps between checkpoints (0 = only at the end)")
    keep_last: int = opt(2, "resume checkpoints kept (with 2, a damaged newest one falls back to the one before)")
    resume: bool = opt(True, "continue from the newest checkpoint in out_dir if there is one")
    seed: int = opt(0, "seed for prompt order, sampling and minibatches")
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, ...")
    dtype: str = opt("auto", "autocast dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")
    gradient_checkpointing: bool = opt(False, "actor and critic recompute activations in the backward pass: less memory")
    offload_frozen: bool = opt(False, "keep the reference and reward model on the CPU, moving each to the GPU only "
                                      "for its forward pass (no-op on CPU runs)")
    tensorboard: bool = opt(True, "also write TensorBoard event files")
    wandb_project: str = opt("", "log to this Weights & Biases project too (needs wandb)")

    RENAMED = {"gamma": "discount"}  # old key -> field: still read, with a warning (chatforge/config.py)

    @property
    def uses_critic(self) -> bool:
        """Only PPO has a critic; GRPO, RLOO and REINFORCE++ take their baseline from the rollouts."""
        return self.algorithm == "ppo"

    @property
    def responses_per_prompt(self) -> int:
        """group_size, or the algorithm's default when it is 0."""
        return self.group_size or (4 if self.algorithm in ("grpo", "rloo") else 1)

    @property
    def kl_in_loss(self) -> bool:
        """True when the KL to the reference is a loss term rather than a per-token reward penalty."""
        return self.kl_in == "loss" or (self.kl_in == "auto" and self.algorithm == "grpo")

    def validate(self):
        """Check everything that can be checked before a model is loaded."""
        self.validate_algorithm()
        # the RM folder is needed to score (reward_source rm) and, for PPO, to start the critic unless `critic` is set
        needs_rm = self.reward_source == "rm" or (self.uses_critic and not (self.reward_source == "fn" and self.critic))
        for name in ("policy", "prompts") + (("reward_model",) if needs_rm else ()):
            if not getattr(self, name):
                raise ChatforgeError(f"ppo: field '{name}' is empty" + (
                    " (with reward_source fn it, or 'critic', is the folder the critic starts from)"
                    if name == "reward_model" and self.reward_source == "fn" else ""))
        if self.reward_source == "fn" and not self.reward_fn:
            raise ChatforgeError("ppo: reward_source 'fn' needs field 'reward_fn' ('package.module:function')")
        check_model_dir(self.policy)
        if self.reference:
            check_model_dir(self.reference)
        if self.reward_model:
            check_reward_model_dir(self.reward_model, "reward_model")
        if self.critic and self.uses_critic:
            check_reward_model_dir(self.critic, "critic")
        if not Path(self.prompts).is_file():
            raise ChatforgeError(f"{self.prompts}: field 'prompts': file does not exist")
        if self.reward_source == "gold" and not self.gold_world:
            raise ChatforgeError("ppo: reward_source 'gold' needs field 'gold_world' (a `chatforge world` folder)")
        if self.ptx_coef > 0 and not self.pretrain_data:
            raise ChatforgeError("ppo: ptx_coef > 0 needs field 'pretrain_data' (pretraining text files)")
        require_positive(self, "ppo", ("steps", "rollout_batch", "max_new_tokens", "ppo_epochs", "minibatch_size",
                                       "kl_horizon", "log_every"))
        require_above_zero(self, "ppo", ("temperature",))  # T < 1 sharpens the rollouts: allowed
        if self.minibatch_size > self.rollout_batch:
            raise ChatforgeError(f"ppo: minibatch_size {self.minibatch_size} is larger than rollout_batch "
                                 f"{self.rollout_batch}")
        for name in ("rollout_batch", "minibatch_size") + (("ptx_batch_size",) if self.ptx_coef > 0 else ()):
            dist.check_divisible("ppo", name, getattr(self, name))

    def validate_algorithm(self):
        """The algorithm's group size, and the step's prompts against it and the torchrun ranks."""
        if self.group_size < 0:
            raise ChatforgeError(f"ppo: field 'group_size' must be >= 0 (0 = the algorithm's default), got "
                                 f"{self.group_size}")
        if self.algorithm in ("grpo", "rloo") and self.responses_per_prompt < 2:
            raise ChatforgeError(f"ppo: algorithm '{self.algorithm}' needs group_size >= 2 (its baseline is the other "
                                 f"responses to the same prompt), got {self.group_size}; e.g. group_size=4")
        if self.rollout_batch % self.responses_per_prompt:
            raise ChatforgeError(f"ppo: field 'rollout_batch' = {self.rollout_batch} must be a multiple of group_size "
                                 f"{self.responses_per_prompt} (responses per step = prompts x group_size)")
        ranks, groups = dist.env_world_size(), self.rollout_batch // self.responses_per_prompt
        if ranks > 1 and groups % ranks:  # each rank samples whole groups, so the prompts must split evenly
            raise ChatforgeError(f"ppo: rollout_batch / group_size = {groups} prompts a step must be a multiple of the "
                                 f"{ranks} torchrun processes (WORLD_SIZE): a prompt's group stays on one rank")


def load_rl_prompts(cfg: Config, tokenizer, context: int) -> list[tuple]:
    """(prompt, token ids with the chat template + assistant header) of each RL prompt, checked against the context."""
    prompts, too_long = [], []
    for prompt, source in read_prompts(cfg.prompts):
        ids = chat_prompt_ids(tokenizer, prompt)
        if len(ids) + cfg.max_new_tokens > context:
            too_long.append(f"{source} ({len(ids)} tokens)")
            continue
        prompts.append((prompt, ids))
    if too_long and cfg.long_prompts == "error":
        raise ChatforgeError(
            f"{len(too_long)} prompt(s) leave no room for max_new_tokens {cfg.max_new_tokens} in the model's "
            f"context of {context} tokens, e.g. {', '.join(too_long[:3])}; shorten them, lower max_new_tokens, "
            "or set long_prompts=drop")
    if too_long:
        print(f"ppo: dropped {len(too_long)} prompts too long for the context")
    if not prompts:
        raise ChatforgeError(f"{cfg.prompts}: no prompt fits in the context")
    return prompts


def step_prompts(prompts: list, step: int, batch: int, seed: int) -> list:
    """The prompts of rollout batch `step`: a fresh seeded shuffle per pass, so a resumed run gets the same ones."""
    orders: dict[int, list[int]] = {}
    chosen = []
    for position in range(step * batch, (step + 1) * batch):
        epoch, index = divmod(position, len(prompts))
        if epoch not in orders:
            orders[epoch] = list(range(len(prompts)))
            random.Random(seed * 1_000_003 + epoch).shuffle(orders[epoch])
        chosen.append(prompts[orders[epoch][index]])
    return chosen


def rank_step_prompts(prompts: list, step: int, cfg: Config) -> list:
    """This rank's share of rollout batch `step`: rollout_batch / group_size prompts split over the ranks, each
    repeated group_size times in a row, so that a group's responses are consecutive rows on one rank."""
    group_size = cfg.responses_per_prompt
    chosen = dist.shard(step_prompts(prompts, step, cfg.rollout_batch // group_size, cfg.seed))
    return [prompt for prompt in chosen for _ in range(group_size)]


@torch.no_grad()
def rollout(actor, tokenizer, prompt_ids: list[list[int]], cfg: Config, seed: int, device) -> tuple:
    """Sample one response per prompt; return (GenerationResult, its tensors on device)."""
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                            seed=seed)
    result = generate(actor, tokenizer, prompt_ids, params)
    return result, result.to_tensors(device=device)


def response_scores(cfg: Config, reward_model, judge, batch_prompts: list, texts: list[str], input_ids, attention_mask,
                    prompt_width: int, device) -> torch.Tensor:
    """Raw score of each response, (batch,): the RM read at its last token, or the gold judge (reward_source gold)."""
    if cfg.reward_source == "gold":
        gold = judge([prompt for prompt, _ in batch_prompts], texts)
        return torch.tensor(gold, dtype=torch.float32, device=device)
    with on_device(reward_model, device, cfg.offload_frozen):
        return by_length(partial(rollout_rewards, reward_model), input_ids, attention_mask, prompt_width)


def combined_scores(model_scores: torch.Tensor | None, fn_scores: torch.Tensor | None, finished: torch.Tensor,
                    cfg: Config, reward_mean: float, reward_std: float) -> torch.Tensor:
    """Each response's score, (batch,), added at its last token: the RM's (or gold) score normalised by the SFT
    samples' scale, plus reward_fn_weight * the reward function's score as returned, minus the missing-EOS penalty.
    The fn's score is added after the normalisation, never normalised itself: a rule's 0/1 keeps its meaning, and
    a rule SFT samples all fail would have a std of ~0 to divide by."""
    scores = torch.zeros_like(finished)
    if model_scores is not None:
        scores = (model_scores - reward_mean) / reward_std if cfg.normalize_reward else model_scores
    if fn_scores is not None:
        scores = scores + cfg.reward_fn_weight * fn_scores
    return scores - cfg.missing_eos_penalty * (1.0 - finished)


def step_scores(cfg: Config, scores: torch.Tensor) -> torch.Tensor:
    """The scores the rewards are built from: REINFORCE++ with groups (group_size >= 2) subtracts each group's mean
    (REINFORCE++-baseline), so a prompt's difficulty does not count; the other algorithms take them as they are."""
    if cfg.algorithm == "reinforce_pp" and cfg.responses_per_prompt > 1:
        return group_centered(scores, cfg.responses_per_prompt)
    return scores


def step_advantages(cfg: Config, rewards: torch.Tensor, old_values: torch.Tensor | None,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(advantages, the critic's returns or None) of a step's per-token rewards, (batch, R); rows come in groups of
    group_size responses to one prompt, and a group is never split across ranks."""
    if cfg.algorithm == "ppo":
        advantages, returns = gae(rewards, old_values, mask, cfg.discount, cfg.lam)
        return dist.whiten_across_ranks(advantages, mask), returns  # mean and variance over every rank's rollouts
    if cfg.algorithm == "reinforce_pp":
        return dist.whiten_across_ranks(returns_to_go(rewards, mask, cfg.discount), mask), None
    if cfg.algorithm == "grpo":
        return grpo_advantages(rewards, mask, cfg.responses_per_prompt), None
    return rloo_advantages(rewards, mask, cfg.responses_per_prompt), None


def advantage_stats(advantages: torch.Tensor, mask: torch.Tensor, raw_scores: torch.Tensor, group_size: int) -> dict:
    """Mean and std of the advantages over response tokens; with groups, the share of prompts whose responses all
    scored the same (a group that teaches nothing when the KL is in the loss)."""
    mean = masked_mean(advantages, mask)
    stats = {"rollout/advantage_mean": mean.item(),
             "rollout/advantage_std": masked_mean((advantages - mean) ** 2, mask).sqrt().item()}
    if group_size > 1:
        groups = raw_scores.view(-1, group_size)
        stats["rollout/equal_score_groups"] = (groups.max(1).values == groups.min(1).values).float().mean().item()
    return stats


def trim(tensors: dict, rows: torch.Tensor) -> dict:
    """The minibatch `rows`, with columns that are padding in every chosen row cut away."""
    picked = {name: t[rows] for name, t in tensors.items()}
    prompt_start = int((picked["prompt_mask"].sum(0) > 0).nonzero()[0])
    response_end = int(picked["response_mask"].sum(1).max())
    return {name: (t[:, prompt_start:] if name.startswith("prompt") else t[:, :response_end])
            for name, t in picked.items()}


def run(cfg: Config) -> Path:
    """Train the policy with PPO(-ptx) against the reward model; return the final policy folder."""
    reward_fn = RewardFn(cfg.reward_fn) if cfg.reward_fn else None
    if reward_fn is not None:  # before the run folder exists: a broken function leaves nothing behind
        reward_fn.preflight([prompt for prompt, _ in read_prompts(cfg.prompts)])
    out_dir, device, amp_dtype = start_run(cfg)
    critic_dir = (cfg.critic or cfg.reward_model) if cfg.uses_critic else ""

    # every input is checked before any weights load
    tokenizer = load_chat_tokenizer(cfg.policy)
    check_tokenizer_fits(tokenizer, cfg.policy, "policy")
    reference_dir = cfg.reference or cfg.policy
    for path, field in ((reference_dir, "reference"), (cfg.reward_model, "reward_model"), (critic_dir, "critic")):
        if path:  # reward_model may be empty with reward_source fn
            check_same_tokenizer(tokenizer, cfg.policy, load_tokenizer(path), path, field)
    from transformers import AutoConfig

    context = getattr(AutoConfig.from_pretrained(cfg.policy), "max_position_embeddings", None) or 2048
    prompts = load_rl_prompts(cfg, tokenizer, context)
    ptx_seq_len = min(cfg.ptx_seq_len or context, context) - 1
    if cfg.ptx_coef > 0:
        next(iter(iter_documents(cfg.pretrain_data, "text")))  # an unreadable corpus fails now, not mid-run
    judge = load_judge(cfg.gold_world)
    if judge is not None:
        judge([prompt for prompt, _ in prompts], [""] * len(prompts))  # a prompt the world cannot judge fails now

    resume_from = latest_checkpoint(out_dir) if cfg.resume else None
    actor = load_causal_lm(resume_from or cfg.policy, device=device)
    actor = configure_trainable(actor, cfg.freeze_layers, cfg.lora_r, cfg.lora_alpha, 0.0, cfg.lora_targets)
    frozen_device = "cpu" if cfg.offload_frozen else device  # offloaded: on the GPU only for their forward passes
    reference = load_causal_lm(reference_dir, device=frozen_device).requires_grad_(False)
    # with the gold judge or a reward function alone as the reward, the RM folder only starts the critic
    reward_model = None if cfg.reward_source in ("gold", "fn") else \
        load_reward_model(cfg.reward_model, frozen_device).requires_grad_(False)
    critic = None if not cfg.uses_critic else \
        load_reward_model(resume_from / "critic" if resume_from else critic_dir, device)
    for model in (actor, reference, reward_model, critic):
        if model is not None:
            model.eval()  # dropout off in every role: the rollout policy must be the policy being scored
    trained_models = [model for model in (actor, critic) if model is not None]
    if cfg.gradient_checkpointing:
        for model in trained_models:
            enable_gradient_checkpointing(model, in_eval_mode=True)
    # what the minibatches train through: DDP under torchrun (gradients averaged over ranks), else the models
    train_actor = dist.wrap(actor)
    # (ids, mask, prompt_width) -> (batch, R)
    critic_values = None if critic is None else dist.wrap(critic, forward=response_values)
    if dist.is_main():
        save_config(cfg, out_dir / "config.yaml")

    minibatches = math.ceil(cfg.rollout_batch / cfg.minibatch_size)
    total_updates = cfg.steps * cfg.ppo_epochs * minibatches
    schedule = warmup_cosine(0, total_updates, cfg.min_lr_ratio)
    optimizers, stateful = [], {}  # (optimizer, scheduler) of the actor, and of the critic when there is one
    for role, model, lr in (("actor", actor, cfg.learning_rate), ("critic", critic, cfg.critic_learning_rate)):
        if model is not None:
            optimizer = build_optimizer(model, lr, cfg.weight_decay)
            optimizers.append((optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)))
            stateful.update({f"{role}_optimizer": optimizers[-1][0], f"{role}_scheduler": optimizers[-1][1]})
    state = {"step": 0, "kl_coef": cfg.kl_coef, "reward_mean": 0.0, "reward_std": 1.0, "ptx_blocks": 0,
             "first": None, "last": None}
    if resume_from is not None:
        state.update(load_trainer_state(resume_from, stateful))
        print(f"ppo: resuming after step {state['step']} from {resume_from}")
    elif cfg.normalize_reward and cfg.reward_source != "fn":  # a reward function's score is never normalised
        # reward normalisation: the scale of SFT (reference) samples' rewards, measured once before any update;
        # the reference, not the actor, so a later round of iterated RLHF still measures SFT's scale
        first_prompts = dist.shard(step_prompts(prompts, 0, cfg.rollout_batch, cfg.seed + 1))
        with on_device(reference, device, cfg.offload_frozen):
            result, tensors = rollout(reference, tokenizer, [ids for _, ids in first_prompts], cfg,
                                      dist.rank_seed(cfg.seed + 1), device)
        with torch.no_grad(), autocast(device, amp_dtype):
            scores = dist.all_gather(response_scores(cfg, reward_model, judge, first_prompts, result.texts,
                                                     *join_rollout(tensors), device))  # every rank's
        state["reward_mean"], state["reward_std"] = scores.mean().item(), max(scores.std().item(), 1e-6)
    ptx_batches = None
    if cfg.ptx_coef > 0:
        blocks = PackedBlocks(cfg.pretrain_data, tokenizer, ptx_seq_len, seed=cfg.seed)
        ptx_batches = blocks.batches(cfg.ptx_batch_size, skip_blocks=state["ptx_blocks"])
    group_size = cfg.responses_per_prompt
    logger = MetricsLogger(out_dir, cfg.tensorboard, cfg.wandb_project or None, to_dict(cfg), state["step"])
    print(f"ppo: {cfg.algorithm}, {len(prompts)} prompts, {cfg.steps} steps x {cfg.rollout_batch} rollouts "
          f"({group_size} per prompt), {cfg.ppo_epochs} epochs of {minibatches} minibatches, beta {state['kl_coef']} "
          f"(KL in the {'loss' if cfg.kl_in_loss else 'reward'}), ptx_coef {cfg.ptx_coef}; SFT rewards "
          f"{state['reward_mean']:.3f} +- {state['reward_std']:.3f}")

    progress = progress_bar(cfg.steps, "ppo", state["step"])
    guard = NonFiniteGuard("ppo", out_dir)
    while state["step"] < cfg.steps:
        step = state["step"]
        step_start = time.perf_counter()
        batch_prompts = rank_step_prompts(prompts, step, cfg)  # this rank's share, group_size rows per prompt
        result, rollout_batch = rollout(actor, tokenizer, [ids for _, ids in batch_prompts], cfg,
                                        dist.rank_seed(cfg.seed * 1_000_003 + step), device)
        generated = time.perf_counter()

        # score: logprobs of both policies, values, rewards -> advantages (nothing here gets gradients)
        sequences = input_ids, attention_mask, prompt_width = join_rollout(rollout_batch)
        mask = rollout_batch["response_mask"].float()  # (batch, R)
        with torch.no_grad(), autocast(device, amp_dtype):
            # in fp32 the sampler's own logprobs match a fresh forward pass to ~1e-5, so that pass is skipped;
            # under bf16 the cached decoding drifts from a full pass, and the PPO ratio must start at 1
            # by_length: rows of similar length together, so little compute goes to padding
            old_logprobs = rollout_batch["logprobs"] if amp_dtype is None else \
                by_length(partial(response_logprobs, actor, temperature=cfg.temperature), *sequences)
            with on_device(reference, device, cfg.offload_frozen):
                ref_logprobs = by_length(partial(response_logprobs, reference, temperature=cfg.temperature), *sequences)
            old_values = None if critic is None else by_length(partial(response_values, critic), *sequences) * mask
            model_scores = None if cfg.reward_source == "fn" else \
                response_scores(cfg, reward_model, judge, batch_prompts, result.texts, input_ids, attention_mask,
                                prompt_width, device)
        fn_scores = None if reward_fn is None else torch.tensor(
            reward_fn([prompt for prompt, _ in batch_prompts], result.texts), dtype=torch.float32, device=device)
        raw_scores = fn_scores if model_scores is None else model_scores  # the reward source's own scores
        finished = torch.tensor(result.finished, dtype=torch.float32, device=device)
        scores = combined_scores(model_scores, fn_scores, finished, cfg, state["reward_mean"], state["reward_std"])
        rewards, kl = kl_penalized_rewards(old_logprobs, ref_logprobs, mask, step_scores(cfg, scores),
                                           0.0 if cfg.kl_in_loss else state["kl_coef"])
        advantages, returns = step_advantages(cfg, rewards, old_values, mask)
        rollout_batch.update(old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, advantages=advantages,
                             **({} if critic is None else {"old_values": old_values, "returns": returns}))
        scored = time.perf_counter()

        # train: ppo_epochs passes of shuffled minibatches
        stats: dict[str, list[float]] = {}
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        minibatch_size = cfg.minibatch_size // dist.world_size()  # this rank's part of each minibatch
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(batch_prompts), generator=generator).to(device)
            for first in range(0, len(batch_prompts), minibatch_size):
                mb = trim(rollout_batch, order[first:first + minibatch_size])
                mb_ids, mb_attention, mb_prompt = join_rollout(mb)
                mb_mask = mb["response_mask"].float()
                # by_length in one process only (under DDP a forward must run once per backward)
                train_rows = len(mb_ids) if dist.world_size() > 1 else 16
                with autocast(device, amp_dtype):
                    logprobs, token_entropy = by_length(partial(response_logprobs_and_entropy, train_actor,
                                                                temperature=cfg.temperature),
                                                        mb_ids, mb_attention, mb_prompt, train_rows)
                    pg_loss, pg_stats = policy_loss(logprobs, mb["old_logprobs"], mb["advantages"], mb_mask,
                                                    cfg.clip_range)
                    actor_loss = pg_loss
                    if cfg.kl_in_loss:  # GRPO's beta * KL(pi || pi_ref), the k3 estimate per token
                        # padding reads the actor's own logprob, a KL of 0: the reference's is 0 where by_length
                        # cut it, and exp(0 - log p) could overflow before the mask zeroes it
                        mb_ref_logprobs = torch.where(mb_mask.bool(), mb["ref_logprobs"], logprobs.detach())
                        kl_loss = masked_mean(k3_kl(logprobs, mb_ref_logprobs), mb_mask)
                        actor_loss = actor_loss + state["kl_coef"] * kl_loss
                        pg_stats["kl_loss"] = kl_loss.item()
                    if ptx_batches is not None:
                        block = dist.shard(next(ptx_batches)).to(device)  # (ptx_batch_size / ranks, ptx_seq_len + 1)
                        ptx_loss = token_cross_entropy(train_actor(input_ids=block[:, :-1], use_cache=False).logits,
                                                       block[:, 1:])
                        actor_loss = actor_loss + cfg.ptx_coef * ptx_loss
                        state["ptx_blocks"] += cfg.ptx_batch_size
                        pg_stats["ptx_loss"] = ptx_loss.item()
                    vf_loss, vf_stats = torch.zeros((), device=device), {}
                    if critic is not None:
                        values = by_length(critic_values, mb_ids, mb_attention, mb_prompt, train_rows)
                        vf_loss, vf_stats = value_loss(values, mb["old_values"], mb["returns"], mb_mask,
                                                       cfg.value_clip_range)
                        vf_stats["value_loss"] = vf_loss.item()
                pg_stats["entropy"] = masked_mean(token_entropy, mb_mask).item()
                (actor_loss + vf_loss).backward()  # separate models: each gets its own loss's gradients
                norms = torch.stack([torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
                                     for model in trained_models])
                apply = guard.step_ok(step, actor_loss.item() + vf_loss.item(), norms)  # else skip, never apply
                for optimizer, scheduler in optimizers:
                    if apply:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                for key, value in {**pg_stats, **vf_stats, "policy_loss": pg_loss.item()}.items():
                    stats.setdefault(key, []).append(value)
        trained = time.perf_counter()

        if cfg.target_kl > 0:
            mean_kl = dist.all_reduce_mean(kl.sum(1).mean().item())  # over all ranks
            state["kl_coef"] = adaptive_kl_coef(state["kl_coef"], mean_kl, cfg.target_kl,
                                                cfg.kl_horizon, cfg.rollout_batch)
        lengths = mask.sum(1)
        tokens = int(dist.all_reduce_sum(lengths.sum()))  # over all ranks
        record = {
            "rollout/reward": raw_scores.mean().item(),
            "rollout/score": scores.mean().item(),
            **({"rollout/reward_fn": fn_scores.mean().item()} if fn_scores is not None else {}),
            "rollout/kl": kl.sum(1).mean().item(),
            "rollout/kl_coef": state["kl_coef"],
            **advantage_stats(advantages, mask, raw_scores, group_size),
            "rollout/response_length": lengths.mean().item(),
            "rollout/eos_rate": finished.mean().item(),
            "rollout/tokens": tokens,
            "rollout/tokens_per_s": tokens / max(generated - step_start, 1e-9),
            "time/generate_s": generated - step_start,
            "time/score_s": scored - generated,
            "time/train_s": trained - scored,
            "time/step_s": trained - step_start,
            **{f"train/{key}": sum(values) / len(values) for key, values in stats.items()},
        }
        if judge is not None:  # with reward_source gold the step's raw scores are already the gold scores
            gold = raw_scores.tolist() if cfg.reward_source == "gold" else \
                judge([prompt for prompt, _ in batch_prompts], result.texts)
            record["rollout/gold_score"] = sum(gold) / len(gold)
        record = dist.all_reduce_mean(record)  # means of the ranks' equal shares: the whole rollout batch's means
        state["step"] = step + 1
        state["first"] = state["first"] or record
        state["last"] = record
        logger.log(step + 1, record)
        progress.update(1)
        if (step + 1) % cfg.log_every == 0:
            progress.set_postfix(reward=f"{record['rollout/reward']:.3f}", kl=f"{record['rollout/kl']:.2f}",
                                 **({"gold": f"{record['rollout/gold_score']:.3f}"} if judge else {}))
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
            dist.on_main(save_checkpoint, out_dir, step + 1, plain_model(actor), tokenizer, stateful,
                         {k: v for k, v in state.items() if k != "step"}, cfg.keep_last, rng_states=gather_rng_states(),
                         write_extra=None if critic is None else
                         lambda folder: save_hf_folder(critic, tokenizer, folder / "critic"))
    progress.close()
    logger.close()

    final = out_dir / "final"
    summary = {"algorithm": cfg.algorithm, "group_size": group_size, "steps": state["step"],
               "reward_mean_sft": state["reward_mean"], "reward_std_sft": state["reward_std"],
               "kl_coef": state["kl_coef"], "first": state["first"], "last": state["last"]}
    if dist.is_main():
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    last_rollout = {key: value for key, value in (state["last"] or {}).items()  # the last step's
                    if key.startswith("rollout/") and key not in ("rollout/tokens", "rollout/tokens_per_s")}
    name = cfg.algorithm.replace("_", "-") + ("-ptx" if cfg.ptx_coef > 0 else "")  # ppo-ptx, grpo, ...
    card = model_card(name, tokenizer, base_model=cfg.policy,
                      data=[cfg.prompts, *(cfg.pretrain_data if cfg.ptx_coef > 0 else [])], folder=str(final),
                      metrics={"steps": state["step"], **last_rollout})
    dist.on_main(save_hf_folder, plain_model(actor), tokenizer, final, card=card)
    print(f"ppo: done -> {final}")
    return final
