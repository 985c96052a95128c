"""Stage 6: compare a checkpoint (e.g. the PPO policy) with a baseline (e.g. the SFT model) on a prompt set.

Each model answers every prompt `samples_per_prompt` times; sample j of prompt i of the model is
judged against sample j of prompt i of the baseline, by the gold scorer of the built-in world and/or a
reward model. Also per model: KL to the reference on its own samples (summed over response tokens),
perplexity on held-out pretraining text (the "alignment tax"), response length and EOS rate. With
best_of_n, InstructGPT's cheap baseline joins: n samples of the baseline, the reward model picks one.
With the gold judge, each model's answers are also broken down by failure dimension (hallucination,
harmful compliance, over-refusal, ...) and by prompt kind, and 95% intervals come from a bootstrap over
prompts (paired for win rates).

    out_dir/eval.json       per model ("model", "baseline", "best_of_n"): gold_score, reward_mean,
                            kl_to_reference, ppl, response_length, eos_rate, gold_score_ci95, and
                            "dimensions": {"failure_rates": {dimension: {"rate", "n"}},
                            "gold_score_by_kind": {kind: {"score", "n"}}}; winrate_gold / winrate_rm of
                            the model against the baseline (and winrate_*_vs_best_of_n), each with _ci95
    out_dir/samples.jsonl   per prompt and sample: the answers, their scores and failed dimensions
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from chatforge.config import opt, require_positive, save_config
from chatforge.data.jsonl import write_jsonl
from chatforge.data.corpus import corpus_files
from chatforge.data.formats import read_prompts
from chatforge.errors import ChatforgeError
from chatforge.eval.bootstrap import mean_interval, win_rate_interval
from chatforge.eval.compare import (best_indices, heldout_perplexity, kl_to_reference, mean, repeat_each,
                                    response_stats, sample_answers, take, win_rate)
from chatforge.eval.dimensions import dimensions_block, rates_only
from chatforge.eval.judges import GoldJudge
from chatforge.generation import SamplingParams
from chatforge.models.io import check_model_dir, check_same_tokenizer, load_causal_lm, load_tokenizer
from chatforge.models.reward import RewardJudge, check_reward_model_dir
from chatforge.models.templates import load_chat_tokenizer
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
    seed: int = opt(0, "sampling seed (and the bootstrap's)")
    ci_resamples: int = opt(2000, "prompt resamples of the bootstrap behind the 95% intervals (0 = no intervals)")
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
        if self.max_prompts < 0 or self.temperature < 0 or self.best_of_n < 0 or self.ci_resamples < 0:
            raise ChatforgeError("eval: fields 'max_prompts', 'temperature', 'best_of_n' and 'ci_resamples' "
                                 "must be >= 0")
        if self.best_of_n and not self.reward_model:
            raise ChatforgeError("eval: field 'best_of_n' needs 'reward_model' (it picks the best of n samples)")
        if self.best_of_n and not self.baseline:
            raise ChatforgeError("eval: field 'best_of_n' needs 'baseline' (the model whose samples are picked from)")


def same_folder(a: str, b: str) -> bool:
    """True when two paths name the same folder."""
    return bool(a) and bool(b) and Path(a).resolve() == Path(b).resolve()


def judge_samples(prompts: list, texts: list[str], judges: dict) -> tuple[dict, list[dict] | None]:
    """(per-sample scores by judge name, the gold judge's full judgements or None without it)."""
    scores, judgements = {}, None
    for name, judge in judges.items():
        if name == "gold":
            judgements = judge.judgements(prompts, texts)
            scores[name] = [judgement["score"] for judgement in judgements]
        else:
            scores[name] = judge(prompts, texts)
    return scores, judgements


def policy_numbers(model, prompts: list, result, judges: dict, reference,
                   temperature: float) -> tuple[dict, dict, list[dict] | None]:
    """(numbers, per-sample scores by judge name, gold judgements) of one model's samples `result` for the
    prompt-major `prompts`."""
    scores, judgements = judge_samples(prompts, result.texts, judges)
    numbers = {"gold_score": mean(scores["gold"]) if "gold" in scores else None,
               "reward_mean": mean(scores["reward"]) if "reward" in scores else None,
               "kl_to_reference": (kl_to_reference(model, reference, result, temperature)
                                   if reference is not None else None)}
    return {**numbers, **response_stats(result)}, scores, judgements


def gold_details(scores: dict, judgements: list[dict] | None, n: int, resamples: int, seed: int) -> dict:
    """gold_score_ci95 (bootstrap over prompts, n samples each) and the dimensions block; {} without gold."""
    if judgements is None:
        return {}
    return {"gold_score_ci95": mean_interval(scores["gold"], n, resamples, seed),
            "dimensions": dimensions_block(judgements)}


def win_rates(scores_a: dict, scores_b: dict, suffix: str = "", n: int = 1, resamples: int = 0,
              seed: int = 0) -> dict:
    """winrate_gold / winrate_rm of a against b, for the judges both were scored by, each with its paired
    bootstrap interval over prompts (winrate_*_ci95; n samples a prompt) when resamples > 0."""
    rates = {}
    for name, short in (("gold", "gold"), ("reward", "rm")):
        if name in scores_a:
            rates[f"winrate_{short}{suffix}"] = win_rate(scores_a[name], scores_b[name])
            if resamples:
                rates[f"winrate_{short}{suffix}_ci95"] = win_rate_interval(scores_a[name], scores_b[name], n,
                                                                           resamples, seed)
    return rates


def add_scores(samples: list[dict], who: str, scores: dict, judgements: list[dict] | None = None) -> None:
    """Put each judge's score of `who`'s answer into every sample record (key WHO_JUDGE), and the
    dimensions the answer fails (WHO_failures) when the gold judge saw it."""
    for name, values in scores.items():
        for sample, value in zip(samples, values):
            sample[f"{who}_{name}"] = value
    for sample, judgement in zip(samples, judgements or []):
        sample[f"{who}_failures"] = [name for name, failed in judgement["failures"].items() if failed]


def print_table(report: dict, columns: list[str]) -> None:
    """The numbers and failure rates of each model side by side, then the win rates with their intervals."""
    def shown(value):
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"

    print(f"{'':<26}" + "".join(f"{name:>12}" for name in columns))
    for metric in METRICS:
        print(f"{metric:<26}" + "".join(f"{shown(report[name][metric]):>12}" for name in columns))
    rates = {name: rates_only(report[name]["dimensions"]) for name in columns if "dimensions" in report[name]}
    for dimension in dict.fromkeys(name for model_rates in rates.values() for name in model_rates):
        print(f"{dimension + ' rate':<26}" + "".join(f"{shown(rates.get(name, {}).get(dimension)):>12}"
                                                     for name in columns))
    for key, value in report.items():
        if key.startswith("winrate") and not key.endswith("_ci95"):
            interval = report.get(f"{key}_ci95")
            print(f"{key}: {shown(value)}" + (f" [{shown(interval[0])}, {shown(interval[1])}]" if interval else ""))


def finite(value):
    """nan/inf as None, so eval.json stays valid JSON."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
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

    tokenizer = load_chat_tokenizer(cfg.model)
    baseline_tokenizer = load_chat_tokenizer(cfg.baseline) if cfg.baseline else None
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
    report["model"], model_scores, model_judgements = policy_numbers(model, rows, model_result, judges, reference,
                                                                     temperature)
    report["model"].update(gold_details(model_scores, model_judgements, n, cfg.ci_resamples, cfg.seed))
    samples = [{"prompt": prompt, "sample": i % n, "model": text}
               for i, (prompt, text) in enumerate(zip(rows, model_result.texts))]
    add_scores(samples, "model", model_scores, model_judgements)

    if baseline is not None:
        baseline_result = sample_answers(baseline, baseline_tokenizer, prompts, n, params)
        report["baseline"], baseline_scores, baseline_judgements = policy_numbers(
            baseline, rows, baseline_result, judges, reference, temperature)
        report["baseline"].update(gold_details(baseline_scores, baseline_judgements, n, cfg.ci_resamples, cfg.seed))
        rates = win_rates(model_scores, baseline_scores, "", n, cfg.ci_resamples, cfg.seed)
        for sample, text in zip(samples, baseline_result.texts):
            sample["baseline"] = text
        add_scores(samples, "baseline", baseline_scores, baseline_judgements)

    if cfg.best_of_n:
        # best_of_n samples of each prompt from the baseline (sampled even when the comparison is greedy)
        pool_params = SamplingParams(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=temperature,
                                     seed=cfg.seed + 1)
        pool = sample_answers(baseline, baseline_tokenizer, prompts, cfg.best_of_n, pool_params)
        pool_rewards = judges["reward"](repeat_each(prompts, cfg.best_of_n), pool.texts)
        picked = take(pool, best_indices(pool_rewards, cfg.best_of_n))  # one answer per prompt
        report["best_of_n"], best_scores, best_judgements = policy_numbers(baseline, prompts, picked, judges, None,
                                                                           temperature)
        report["best_of_n"].update(gold_details(best_scores, best_judgements, 1, cfg.ci_resamples, cfg.seed))
        # KL(best-of-n || baseline) <= log n - (n - 1) / n (Stiennon et al. 2020; a bound, Beirami et al. 2024),
        # when the baseline is the reference
        report["best_of_n"]["kl_to_reference"] = (math.log(cfg.best_of_n) - (cfg.best_of_n - 1) / cfg.best_of_n
                                                  if reference is baseline else None)
        report["best_of_n"]["n"] = cfg.best_of_n
        best_scores = {name: repeat_each(scores, n) for name, scores in best_scores.items()}  # line up with samples
        rates.update(win_rates(model_scores, best_scores, "_vs_best_of_n", n, cfg.ci_resamples, cfg.seed))
        for i, sample in enumerate(samples):
            sample["best_of_n"] = picked.texts[i // n]
        add_scores(samples, "best_of_n", best_scores, best_judgements and repeat_each(best_judgements, n))

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
    write_jsonl(out_dir / "samples.jsonl", [finite(sample) for sample in samples])
    print_table(report, [name for name in ("model", "baseline", "best_of_n") if name in report])
    print(f"eval: wrote {eval_path} and {out_dir / 'samples.jsonl'}")
    return eval_path
