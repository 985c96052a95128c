"""Answers of a model to prompts: chat models through their chat template, base models few-shot."""

from __future__ import annotations

from chatforge.data.chat import chat_prompt_ids
from chatforge.generation import GenerationResult, SamplingParams, generate


def chat_answers(model, tokenizer, prompts: list, params: SamplingParams, batch_size: int = 64) -> GenerationResult:
    """Generate the assistant's reply to each prompt (a user message, or a list of messages)."""
    ids = [chat_prompt_ids(tokenizer, prompt) for prompt in prompts]
    return generate(model, tokenizer, ids, params, batch_size=batch_size)


def fewshot_prompt(question: str, examples: list[tuple[str, str]]) -> str:
    """'Question: ...\\nAnswer: ...' worked examples, then the question: the corpus's own Q/A format."""
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in examples)
    return f"{shots}Question: {question}\nAnswer:"


def fewshot_answers(model, tokenizer, prompts: list, examples: list[tuple[str, str]], params: SamplingParams,
                    batch_size: int = 64) -> list[str]:
    """A base model's answers in the Q/A format: the completion up to the end of its first line."""
    questions = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
    result = generate(model, tokenizer, [fewshot_prompt(q, examples) for q in questions], params,
                      batch_size=batch_size)
    return [text.split("\n")[0].strip() for text in result.texts]
