"""Sampling rounds for the stages that learn from the policy's own scored samples (rejection_sampling,
online_dpo): their shared config fields and checks, a round's prompts and samples, and the samples' scores.

A sample's score, which ranks it among its prompt's samples, means what PPO adds at a rollout's last token
(chatforge/stages/ppo.py): the reward source's own score (reward_source rm: the reward model read at the
response's last token; gold: the built-in world's gold judge; fn: reward_fn alone, never normalised),
normalised by the mean and std of the first round's scores (the starting policy's samples, as PPO's SFT
samples), plus reward_fn_weight * the reward function's score, minus missing_eos_penalty for a response that
never ended. Runs in one process: under torchrun these stages stop with an error.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from chatforge import distributed as dist
from chatforge.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from chatforge.config import opt, require_above_zero, require_positive, save_config, to_dict
from chatforge.errors import ChatforgeError
from chatforge.eval.judges import load_judge
from chatforge.generation import GenerationResult, SamplingParams, generate
from chatforge.guards import NonFiniteGuard
from chatforge.metrics import MetricsLogger, progress_bar
from chatforge.models.card import model_card
from chatforge.models.io import (check_model_dir, check_same_tokenizer, check_tokenizer_fits, load_causal_lm,
                                 load_tokenizer, save_hf_folder)
from chatforge.models.reward import check_reward_model_dir, load_reward_model, sequence_rewards
from chatforge.models.scoring import join_rollout
from chatforge.models.templates import load_chat_tokenizer
from chatforge.optim import build_optimizer
from chatforge.reward_fn import RewardFn
from chatforge.runtime import autocast, start_run
from chatforge.stages.ppo import load_rl_prompts, step_prompts


@dataclass
class SamplingConfig:
    """The fields every sampling-round stage shares; a stage's Config adds its own after these."""

    policy: str = opt("", "model folder the policy starts from (the SFT model)")
    prompts: str = opt("", 'JSONL of {"prompt": ...} RL prompts (the world\'s prompts/rl.jsonl; no responses needed)')
    reward_model: str = opt("", "reward-model folder (written by `chatforge rm`), frozen; scores the samples "
                                "with reward_source rm")
    reward_source: Literal["rm", "gold", "fn"] = opt(
        "rm", "what scores each sample: the reward model; the built-in world's gold judge (needs gold_world), an "
              "oracle run; or reward_fn alone")
    reward_fn: str = opt("", "a Python reward function 'package.module:function' or 'path/file.py:function' (as "
                             "ppo's, docs/ppo.md); with reward_source rm/gold its score * reward_fn_weight is added "
                             "to the normalised score")
    reward_fn_weight: float = opt(1.0, "weight of reward_fn's score (it is never normalised; 1 = as returned)")
    gold_world: str = opt("", "built-in world folder: log the gold score of every round's samples")
    out_dir: str = opt("runs/sampling", "run folder")
    rounds: int = opt(3, "rounds of sample -> score -> train; each round samples the policy the last one trained")
    prompts_per_round: int = opt(64, "RL prompts sampled each round (a fresh seeded shuffle per pass over the file)")
    max_new_tokens: int = opt(48, "longest response; a response cut here never ended and is penalised")
    temperature: float = opt(1.0, "sampling temperature")
    long_prompts: Literal["error", "drop"] = opt(
        "error", "a prompt with no room for max_new_tokens in the context: stop with an error, or drop it")
    missing_eos_penalty: float = opt(1.0, "subtracted from the (normalised) score of a response that never ended")
    generation_batch: int = opt(64, "responses decoded together (memory; another value draws other samples)")
    learning_rate: float = opt(1e-5, "learning rate (constant; one AdamW over all rounds)")
    weight_decay: float = opt(0.0, "AdamW weight decay on matrices")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)")
    keep_last: int = opt(2, "resume checkpoints kept, one per round (with 2, a damaged newest one falls back to the "
                            "one before)")
    resume: bool = opt(True, "continue from the newest round checkpoint in out_dir if there is one")
    seed: int = opt(0, "seed for prompt order, sampling and training order")
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, ...")
    dtype: str = opt("auto", "autocast dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")
    tensorboard: bool = opt(True, "also write TensorBoard event files")


def check_sampling_config(cfg: SamplingConfig, stage: str, positive: tuple[str, ...] = ()) -> None:
    """The checks of the shared fields (and `positive` ones of the stage's own) before anything loads."""
    if dist.env_world_size() > 1:
        raise ChatforgeError(f"{stage}: runs in one process; start it with python / chatforge, not torchrun")
    for name in ("policy", "prompts") + (("reward_model",) if cfg.reward_source == "rm" else ()):
        if not getattr(cfg, name):
            raise ChatforgeError(f"{stage}: field '{name}' is empty")
    check_model_dir(cfg.policy)
    if cfg.reward_model:
        check_reward_model_dir(cfg.reward_model, "reward_model")
    if not Path(cfg.prompts).is_file():
        raise ChatforgeError(f"{cfg.prompts}: field 'prompts': file does not exist")
    if cfg.reward_source == "gold" and not cfg.gold_world:
        raise ChatforgeError(f"{stage}: reward_source 'gold' needs field 'gold_world' (a `chatforge world` folder)")
    if cfg.gold_world and not (Path(cfg.gold_world) / "world.json").is_file():
        raise ChatforgeError(f"{cfg.gold_world}: field 'gold_world': no world.json; give a `chatforge world` folder")
    if cfg.reward_source == "fn" and not cfg.reward_fn:
        raise ChatforgeError(f"{stage}: reward_source 'fn' needs field 'reward_fn' ('package.module:function')")
    require_positive(cfg, stage, ("rounds", "prompts_per_round", "max_new_tokens", "generation_batch") + positive)
    require_above_zero(cfg, stage, ("temperature", "learning_rate"))


@dataclass
class Scorers:
    """What scores a round's samples: the reward model (reward_source rm), the gold judge, the reward function."""

    reward_model: torch.nn.Module | None
    judge: object | None
    reward_fn: RewardFn | None


def prepare(cfg: SamplingConfig, stage: str) -> tuple:
    """(chat tokenizer, [(prompt, ids)] that fit the context, Scorers without the RM's weights): every input checked
    (tokenizers, prompts, the judge and reward function each tried on the prompts) before the run folder is made,
    so nothing is written on bad input."""
    from transformers import AutoConfig

    tokenizer = load_chat_tokenizer(cfg.policy)
    check_tokenizer_fits(tokenizer, cfg.policy, "policy")
    context = getattr(AutoConfig.from_pretrained(cfg.policy), "max_position_embeddings", None) or 2048
    prompts = load_rl_prompts(cfg, tokenizer, context)
    return tokenizer, prompts, check_scorers(cfg, tokenizer, prompts)


def check_scorers(cfg: SamplingConfig, tokenizer, prompts: list) -> Scorers:
    """The judge and reward function, each tried on the prompts, and the RM's tokenizer checked; the RM's weights
    are not loaded yet (load_reward_model_into)."""
    if cfg.reward_model:
        check_same_tokenizer(tokenizer, cfg.policy, load_tokenizer(cfg.reward_model), cfg.reward_model,
                             "reward_model")
    judge = load_judge(cfg.gold_world)
    if judge is not None:
        judge([prompt for prompt, _ in prompts], [""] * len(prompts))  # a prompt the world cannot judge fails now
    reward_fn = RewardFn(cfg.reward_fn) if cfg.reward_fn else None
    if reward_fn is not None:
        reward_fn.preflight([prompt for prompt, _ in prompts])
    return Scorers(None, judge, reward_fn)


def load_reward_model_into(scorers: Scorers, cfg: SamplingConfig, device) -> None:
    """Load the frozen reward model when it scores the samples (reward_source rm)."""
    if cfg.reward_source == "rm":
        scorers.reward_model = load_reward_model(cfg.reward_model, device).requires_grad_(False).eval()


def sample_round(model, round_prompts: list[tuple], per_prompt: int, cfg: SamplingConfig, seed: int,
                 tokenizer) -> GenerationResult:
    """`per_prompt` samples of each (prompt, ids), in prompt order: samples i * per_prompt ... of prompt i."""
    ids = [prompt_ids for _, prompt_ids in round_prompts for _ in range(per_prompt)]
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature, seed=seed)
    return generate(model, tokenizer, ids, params, batch_size=cfg.generation_batch)


@torch.no_grad()
def source_scores(cfg: SamplingConfig, scorers: Scorers, prompts: list, result: GenerationResult, device,
                  amp_dtype) -> dict:
    """Per sample: 'raw' the reward source's own score (N,), 'fn' the reward function's (N,) or None, 'gold' the
    gold judge's (N,) or None, 'finished' 1.0 where the response ended (N,); prompts: each sample's prompt."""
    texts = result.texts
    gold = torch.tensor(scorers.judge(prompts, texts)) if scorers.judge is not None else None
    fn = torch.tensor(scorers.reward_fn(prompts, texts)) if scorers.reward_fn is not None else None
    if cfg.reward_source == "rm":
        raw = []
        for start in range(0, len(result), cfg.generation_batch):
            part = GenerationResult(*(field[start:start + cfg.generation_batch] for field in (
                result.prompt_ids, result.response_ids, result.logprobs, result.finished, result.texts)),
                result.pad_token_id)
            input_ids, attention_mask, prompt_width = join_rollout(part.to_tensors(device=device))
            response_mask = attention_mask.clone()
            response_mask[:, :prompt_width] = 0  # an RM with a likelihood weight reads the response tokens' likelihood
            with autocast(device, amp_dtype):
                raw.append(sequence_rewards(scorers.reward_model, input_ids, attention_mask, response_mask).float().cpu())
        raw = torch.cat(raw)
    else:
        raw = gold if cfg.reward_source == "gold" else fn
    return {"raw": raw, "fn": fn, "gold": gold, "finished": torch.tensor(result.finished, dtype=torch.float32)}


def normalisation(cfg: SamplingConfig, raw: torch.Tensor) -> tuple[float, float]:
    """(mean, std) the reward source's scores are normalised by, from the first round's samples; (0, 1) for fn."""
    if cfg.reward_source == "fn":
        return 0.0, 1.0
    return raw.mean().item(), max(raw.std().item(), 1e-6)


def combined_scores(scores: dict, cfg: SamplingConfig, mean: float, std: float) -> torch.Tensor:
    """Each sample's score, (N,): the normalised source score, + reward_fn_weight * fn, - the missing-EOS penalty."""
    combined = torch.zeros_like(scores["finished"]) if cfg.reward_source == "fn" else (scores["raw"] - mean) / std
    if scores["fn"] is not None:
        combined = combined + cfg.reward_fn_weight * scores["fn"]
    return combined - cfg.missing_eos_penalty * (1.0 - scores["finished"])


def sample_metrics(scores: dict, combined: torch.Tensor, result: GenerationResult, seconds: float) -> dict:
    """The round's sample numbers: source reward (mean, max), score, reward_fn, gold, length, EOS rate, tokens/s."""
    tokens = sum(len(ids) for ids in result.response_ids)
    record = {"samples/reward": scores["raw"].mean().item(), "samples/reward_max": scores["raw"].max().item(),
              "samples/score": combined.mean().item(), "samples/response_length": tokens / len(result),
              "samples/eos_rate": scores["finished"].mean().item(), "samples/tokens_per_s": tokens / max(seconds, 1e-9)}
    if scores["fn"] is not None:
        record["samples/reward_fn"] = scores["fn"].mean().item()
    if scores["gold"] is not None:
        record["samples/gold_score"] = scores["gold"].mean().item()
    return record



@dataclass
class Rounds:
    """A sampling-round run: what every round reads, and the state its checkpoints keep."""

    cfg: SamplingConfig
    stage: str
    tokenizer: object
    prompts: list  # (prompt, token ids with the chat template + assistant header)
    scorers: Scorers
    out_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    model: torch.nn.Module  # the policy being trained
    optimizer: torch.optim.Optimizer
    state: dict  # round, reward_mean, reward_std, first and last round's metrics
    logger: MetricsLogger
    progress: object
    guard: NonFiniteGuard


def start_rounds(cfg: SamplingConfig, stage: str, check=None) -> Rounds:
    """Check every input (and `check(tokenizer)`, the stage's own) before the run folder is made, then load the
    policy (from the newest round checkpoint when resuming), the reward model and one AdamW."""
    tokenizer, prompts, scorers = prepare(cfg, stage)
    if check is not None:
        check(tokenizer)
    out_dir, device, amp_dtype = start_run(cfg)
    resume_from = latest_checkpoint(out_dir) if cfg.resume else None
    model = load_causal_lm(resume_from or cfg.policy, device=device).eval()
    load_reward_model_into(scorers, cfg, device)
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    state = {"round": 0, "reward_mean": None, "reward_std": None, "first": None, "last": None}
    if resume_from is not None:
        state.update(load_trainer_state(resume_from, {"optimizer": optimizer}))
        print(f"{stage}: resuming after round {state['round']} from {resume_from}")
    save_config(cfg, out_dir / "config.yaml")
    logger = MetricsLogger(out_dir, cfg.tensorboard, None, to_dict(cfg), state["round"])
    progress = progress_bar(cfg.rounds, stage, state["round"])
    return Rounds(cfg, stage, tokenizer, prompts, scorers, out_dir, device, amp_dtype, model, optimizer, state,
                  logger, progress, NonFiniteGuard(stage, out_dir))


@dataclass
class RoundSamples:
    """A round's samples, `per_prompt` of each prompt in prompt order, scored."""

    prompts: list  # each sample's prompt, (N,)
    result: GenerationResult
    scores: dict  # source_scores
    combined: torch.Tensor  # (N,): what ranks the samples
    record: dict  # the round's metrics so far
    times: dict


def sample_and_score(rounds: Rounds, per_prompt: int) -> RoundSamples:
    """Sample this round's prompts from the current policy and score the samples; the first round's scores set
    the normalisation (the starting policy's samples, as PPO's SFT samples)."""
    cfg, state = rounds.cfg, rounds.state
    start = time.perf_counter()
    round_prompts = step_prompts(rounds.prompts, state["round"], cfg.prompts_per_round, cfg.seed)
    result = sample_round(rounds.model, round_prompts, per_prompt, cfg, cfg.seed * 1_000_003 + state["round"],
                          rounds.tokenizer)
    sampled = time.perf_counter()
    prompts = [prompt for prompt, _ in round_prompts for _ in range(per_prompt)]
    scores = source_scores(cfg, rounds.scorers, prompts, result, rounds.device, rounds.amp_dtype)
    if state["reward_mean"] is None:
        state["reward_mean"], state["reward_std"] = normalisation(cfg, scores["raw"])
    combined = combined_scores(scores, cfg, state["reward_mean"], state["reward_std"])
    record = sample_metrics(scores, combined, result, sampled - start)
    return RoundSamples(prompts, result, scores, combined, record,
                        {"start": start, "sampled": sampled, "scored": time.perf_counter()})


def end_round(rounds: Rounds, samples: RoundSamples, **postfix) -> None:
    """Log the round's metrics (step = the round), show them, and checkpoint the policy and optimizer."""
    times, state = samples.times, rounds.state
    done = time.perf_counter()
    record = {**samples.record, "time/sample_s": times["sampled"] - times["start"],
              "time/score_s": times["scored"] - times["sampled"], "time/train_s": done - times["scored"],
              "time/round_s": done - times["start"]}
    state["round"] += 1
    state["first"] = state["first"] or record
    state["last"] = record
    rounds.logger.log(state["round"], record)
    rounds.progress.update(1)
    gold = {"gold": f"{record['samples/gold_score']:.3f}"} if "samples/gold_score" in record else {}
    rounds.progress.set_postfix(reward=f"{record['samples/reward']:.3f}", **postfix, **gold)
    save_checkpoint(rounds.out_dir, state["round"], rounds.model, rounds.tokenizer, {"optimizer": rounds.optimizer},
                    state, rounds.cfg.keep_last)


def optimizer_step(rounds: Rounds, loss: float) -> bool:
    """Clip the accumulated gradient and step, unless the loss or gradient is not finite (then the step is
    skipped, never applied); zero the gradient either way. True when the step was taken."""
    grad_norm = torch.nn.utils.clip_grad_norm_(rounds.model.parameters(), rounds.cfg.grad_clip or float("inf"))
    ok = rounds.guard.step_ok(rounds.state["round"], loss, grad_norm)
    if ok:
        rounds.optimizer.step()
    rounds.optimizer.zero_grad(set_to_none=True)
    return ok


def finish(rounds: Rounds, tag: str) -> Path:
    """Close the logs; write summary.json and out_dir/final (the policy, a plain HF folder with a model card)."""
    rounds.progress.close()
    rounds.logger.close()
    return save_final(rounds.out_dir, rounds.model, rounds.tokenizer, rounds.cfg, rounds.state, tag)

def save_final(out_dir: Path, model, tokenizer, cfg: SamplingConfig, state: dict, tag: str) -> Path:
    """summary.json (first and last round, normalisation) and out_dir/final: the policy, a plain HF folder."""
    if state["round"] == 0:
        raise ChatforgeError(f"{tag}: no round ran (rounds={cfg.rounds})")
    summary = {"rounds": state["round"], "reward_mean": state["reward_mean"], "reward_std": state["reward_std"],
               "first": state["first"], "last": state["last"]}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    final = out_dir / "final"
    last = {key: value for key, value in state["last"].items() if key.startswith(("samples/", "kept/", "train/"))
            and not key.endswith("tokens_per_s")}
    card = model_card(tag, tokenizer, base_model=cfg.policy, data=[cfg.prompts], folder=str(final),
                      metrics={"rounds": state["round"], **last})
    save_hf_folder(model, tokenizer, final, card=card)
    print(f"{tag.replace('-', '_')}: done -> {final}")
    return final
