"""Does a base model know the world's facts? Greedy completion of fact cloze prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from chatforge.errors import ChatforgeError

_WORD = re.compile(r"[\w']+")


def load_clozes(path: str | Path) -> list[dict]:
    """Read `{"prompt": "Borin lives in", "answer": "Trask"}` lines."""
    path = Path(path)
    if not path.exists():
        raise ChatforgeError(f"{path}: fact prompts file does not exist")
    clozes = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        for field in ("prompt", "answer"):
            if not isinstance(record.get(field), str):
                raise ChatforgeError(f"{path}:{number}: field '{field}' should be a string")
        clozes.append(record)
    return clozes


def completes_correctly(completion: str, answer: str) -> bool:
    """True when the completion's first words are the answer's words (case and punctuation ignored)."""
    said = _WORD.findall(completion.lower())
    wanted = _WORD.findall(answer.lower())
    return bool(wanted) and said[: len(wanted)] == wanted


def fact_accuracy(model, tokenizer, clozes: list[dict], batch_size: int = 64, max_new_tokens: int = 6) -> dict:
    """Share of cloze prompts whose greedy completion starts with the right answer, plus examples."""
    from chatforge.generation import SamplingParams, generate

    params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=False)
    result = generate(model, tokenizer, [c["prompt"] for c in clozes], params, batch_size=batch_size)
    verdicts = [completes_correctly(text, c["answer"]) for text, c in zip(result.texts, clozes)]
    examples = [{"prompt": c["prompt"], "answer": c["answer"], "completion": text, "correct": ok}
                for c, text, ok in zip(clozes, result.texts, verdicts)]
    return {"accuracy": sum(verdicts) / max(len(verdicts), 1), "n": len(verdicts), "examples": examples}
