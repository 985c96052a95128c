"""Stage 6: compare a checkpoint (e.g. the PPO policy) with a baseline (e.g. the SFT model) on a prompt set.

Each model answers every prompt `samples_per_prompt` times; sample j of prompt i of the model is
judged against sample j of prompt i of the baseline, by the gold scorer of the built-in world and/or a
reward model. Also per model: KL to the reference on its own samples (summed over response tokens),
perplexity on held-out pretraining text (the "alignment tax"), response length and EOS rate. With
best_of_n, InstructGPT's cheap baseline joins: n samples of the baseline, the reward model picks one.

    out_dir/eval.json       per model ("model", "baseline", "best_of_n"): gold_score, reward_mean,
                            kl_to_reference, ppl, response_length, eos_rate; winrate_gold / winrate_rm
                            of the model against the baseline (and winrate_*_vs_best_of_n)
    out_dir/samples.jsonl   per prompt and sample: the answers and their scores
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from chatforge.config import opt, require_positive, save_config
from chatforge.data.corpus import corpus_files
from chatforge.data.formats import read_prompts
from chatforge.errors import ChatforgeError
from chatforge.eval.compare import (best_indices, heldout_perplexity, kl_to_reference, mean, repeat_each,
                                    response_stats, sample_answers, take, win_rate)
from chatforge.eval.judges import GoldJudge
from chatforge.generation import SamplingParams
from chatforge.models.io import check_model_dir, check_same_tokenizer, load_causal_lm, load_tokenizer
from chatforge.models.reward import RewardJudge, check_reward_model_dir
from chatforge.runtime import start_run

METRICS = ("gold_score", "reward_mean", "kl_to_reference", "ppl", "response_length", "eos_rate")


@dataclass
class Config:
    model: str = opt("", "the checkpoint to evaluate (any HF causal-LM folder, e.g. the PPO policy)")
    baseline: str = opt("", "checkpoint to compare with (e.g. the SFT model); empty = the model's own numbers only")
    prompts: str = opt("", 'JSONL of {"prompt": ...} to answer (e.g. the world\'s prompts/eval.jsonl)')
    max_prompts: int = opt(200, "answer at most this many prompts (0 = all)")
    samples_per_prompt: int = opt(4, "answers per prompt and model, to cut sampling noise (1 when greedy)")
    temperature: float = opt(1.0, "sampling temperature; 0 = greedy (then one answer per prompt)")
    max_new_tokens: int = opt(48, "longest answer in tokens")
    gold_world: str = opt("", "built-in world folder: score answers with its gold scorer")
    reward_model: str = opt("", "reward-model folder: score answers with it too")
    reference: str = opt("", "model the KL is measured against (empty = the baseline)")
    ppl_corpus: list[str] = opt([], "held-out pretraining text for perplexity (.jsonl with 'text', .txt, .parquet)")
    ppl_tokens: int = opt(65536, "held-out tokens the perplexity is computed on")
    best_of_n: int = opt(0, "also score best-of-n: n baseline samples, the reward model picks one (0 = off)")
    out_dir: str = opt("runs/eval", "folder for eval.json and samples.jsonl")
    seed: int = opt(0, "sampling seed")
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, ...")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")

    def validate(self):
        """Check everything that can be checked before a model is loaded."""
        if not self.model:
            raise ChatforgeError("eval: field 'model' is empty; give the checkpoint to evaluate")
        for field in ("model", "baseline", "reference", "reward_model"):
            if getattr(self, field):
                try:
                    check_model_dir(getattr(self, field))
                except ChatforgeError as exc:
                    raise ChatforgeError(f"eval: field '{field}': {exc}") from None
        if self.reward_model:
            check_reward_model_dir(self.reward_model)  # a one-label classifier, by its config.json
        if not self.prompts:
            raise ChatforgeError("eval: field 'prompts' is empty; give a JSONL file of {\"prompt\": ...} lines")
        if not Path(self.prompts).is_file():
            raise ChatforgeError(f"{self.prompts}: field 'prompts': file does not exist")
        if self.gold_world and not (Path(self.gold_world) / "world.json").is_file():
            raise ChatforgeError(f"{self.gold_world}: field 'gold_world': no world.json; "
                                 "point it at a folder written by `chatforge world`")
        if self.ppl_corpus:
            corpus_files(self.ppl_corpus)
        require_positive(self, "eval", ("samples_per_prompt", "max_new_tokens", "ppl_tokens"))
        if self.max_prompts < 0 or self.temperature < 0 or self.best_of_n < 0:
            raise ChatforgeError("eval: fields 'max_prompts', 'temperature' and 'best_of_n' must be >= 0")
        if self.best_of_n and not self.reward_model:
            raise ChatforgeError("eval: field 'best_of_n' needs 'reward_model' (it picks the best of n samples)")
        if self.best_of_n and not self.baseline:
            raise ChatforgeError("eval: field 'best_of_n' needs 'baseline' (the model whose samples are picked from)")


def same_folder(a: str, b: str) -> bool:
    """True when two paths name the same folder."""
    return bool(a) and bool(b) and Path(a).resolve() == Path(b).resolve()


def policy_numbers(model, prompts: list, result, judges: dict, reference, temperature: float) -> tuple[dict, dict]:
    """(numbers, per-sample scores by judge name) of one model's samples `result` for the prompt-major `prompts`."""
    scores = {name: judge(prompts, result.texts) for name, judge in judges.items()}
    numbers = {"gold_score": mean(scores["gold"]) if "gold" in scores else None,
               "reward_mean": mean(scores["reward"]) if "reward" in scores else None,
               "kl_to_reference": (kl_to_reference(model, reference, result, temperature)
                                   if reference is not None else None)}
    return {**numbers, **response_stats(result)}, scores


def win_rates(scores_a: dict, scores_b: dict, suffix: str = "") -> dict:
    """winrate_gold / winrate_rm of a against b, for the judges both were scored by."""
    return {f"winrate_{short}{suffix}": win_rate(scores_a[name], scores_b[name])
            for name, short in (("gold", "gold"), ("reward", "rm")) if name in scores_a}


def add_scores(samples: list[dict], who: str, scores: dict) -> None:
    """Put each judge's score of `who`'s answer into every sample record (key WHO_JUDGE)."""
    for name, values in scores.items():
        for sample, value in zip(samples, values):
            sample[f"{who}_{name}"] = value


def print_table(report: dict, columns: list[str]) -> None:
    """The numbers of each model side by side, then the win rates."""
    def shown(value):
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"

    print(f"{'':<18}" + "".join(f"{name:>12}" for name in columns))
    for metric in METRICS:
        print(f"{metric:<18}" + "".join(f"{shown(report[name][metric]):>12}" for name in columns))
    for key, value in report.items():
        if key.startswith("winrate"):
            print(f"{key}: {shown(value)}")


def finite(value):
    """nan/inf as None, so eval.json stays valid JSON."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def run(cfg: Config) -> Path:
    """Sample, score and compare; write eval.json and samples.jsonl; return the eval.json path."""
    out_dir, device, _ = start_run(cfg)
    save_config(cfg, out_dir / "config.yaml")

    prompts = [prompt for prompt, _ in read_prompts(cfg.prompts)][:cfg.max_prompts or None]
    n = cfg.samples_per_prompt if cfg.temperature > 0 else 1  # greedy answers are all the same
    temperature = cfg.temperature or 1.0  # the distribution the logprobs (and the KL) are taken under
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.temperature > 0,
                            temperature=temperature, seed=cfg.seed)
    rows = repeat_each(prompts, n)  # the prompt of every sample, prompt-major
    judges = {}
    if cfg.gold_world:
        judges["gold"] = GoldJudge(cfg.gold_world)
    if cfg.reward_model:
        judges["reward"] = RewardJudge(cfg.reward_model, device=device)

    tokenizer = load_tokenizer(cfg.model)
    baseline_tokenizer = load_tokenizer(cfg.baseline) if cfg.baseline else None
    reference_path = cfg.reference or cfg.baseline
    if reference_path:
        check_same_tokenizer(tokenizer, cfg.model, load_tokenizer(reference_path), reference_path, "reference")
    baseline = load_causal_lm(cfg.baseline, device=device).eval() if cfg.baseline else None
    reference = None
    if reference_path:
        reference = baseline if same_folder(reference_path, cfg.baseline) else \
            load_causal_lm(reference_path, device=device).eval()
    model = load_causal_lm(cfg.model, device=device).eval()
    print(f"eval: {len(prompts)} prompts x {n} samples, judges: {', '.join(judges) or 'none'}")

    report = {"prompts": len(prompts), "samples_per_prompt": n, "judges": list(judges)}
    rates = {}  # win rates of the model, after the per-model numbers in eval.json
    model_result = sample_answers(model, tokenizer, prompts, n, params)
    report["model"], model_scores = policy_numbers(model, rows, model_result, judges, reference, temperature)
    samples = [{"prompt": prompt, "sample": i % n, "model": text}
               for i, (prompt, text) in enumerate(zip(rows, model_result.texts))]
    add_scores(samples, "model", model_scores)

    if baseline is not None:
        baseline_result = sample_answers(baseline, baseline_tokenizer, prompts, n, params)
        report["baseline"], baseline_scores = policy_numbers(baseline, rows, baseline_result, judges, reference,
                                                             temperature)
        rates = win_rates(model_scores, baseline_scores)
        for sample, text in zip(samples, baseline_result.texts):
            sample["baseline"] = text
        add_scores(samples, "baseline", baseline_scores)

    if cfg.best_of_n:
        # best_of_n samples of each prompt from the baseline (sampled even when the comparison is greedy)
        pool_params = SamplingParams(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=temperature,
                                     seed=cfg.seed + 1)
        pool = sample_answers(baseline, baseline_tokenizer, prompts, cfg.best_of_n, pool_params)
        pool_rewards = judges["reward"](repeat_each(prompts, cfg.best_of_n), pool.texts)
        picked = take(pool, best_indices(pool_rewards, cfg.best_of_n))  # one answer per prompt
        report["best_of_n"], best_scores = policy_numbers(baseline, prompts, picked, judges, None, temperature)
        # KL(best-of-n || baseline) <= log n - (n - 1) / n (Stiennon et al. 2020; a bound, Beirami et al. 2024),
        # when the baseline is the reference
        report["best_of_n"]["kl_to_reference"] = (math.log(cfg.best_of_n) - (cfg.best_of_n - 1) / cfg.best_of_n
                                                  if reference is baseline else None)
        report["best_of_n"]["n"] = cfg.best_of_n
        best_scores = {name: repeat_each(scores, n) for name, scores in best_scores.items()}  # line up with samples
        rates.update(win_rates(model_scores, best_scores, "_vs_best_of_n"))
        for i, sample in enumerate(samples):
            sample["best_of_n"] = picked.texts[i // n]
        add_scores(samples, "best_of_n", best_scores)

    ppl = {}  # perplexity last, once per set of weights (best-of-n answers come from the baseline's)
    if cfg.ppl_corpus:
        ppl["model"] = heldout_perplexity(model, tokenizer, cfg.ppl_corpus, cfg.ppl_tokens)
        if baseline is not None:
            ppl["baseline"] = ppl["best_of_n"] = heldout_perplexity(baseline, baseline_tokenizer, cfg.ppl_corpus,
                                                                    cfg.ppl_tokens)
    paths = {"model": cfg.model, "baseline": cfg.baseline, "best_of_n": cfg.baseline}
    for name in ("model", "baseline", "best_of_n"):
        if name in report:
            report[name].update(ppl=ppl.get(name), path=paths[name])
    report.update(rates)
    eval_path = out_dir / "eval.json"
    eval_path.write_text(json.dumps(finite(report), indent=1) + "\n")
    with open(out_dir / "samples.jsonl", "w") as handle:
        for sample in samples:
            handle.write(json.dumps(finite(sample)) + "\n")
    print_table(report, [name for name in ("model", "baseline", "best_of_n") if name in report])
    print(f"eval: wrote {eval_path} and {out_dir / 'samples.jsonl'}")
    return eval_path
