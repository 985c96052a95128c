"""Answers of a model to prompts: chat models through their chat template, base models few-shot, and pools
of K distinct sampled answers per prompt (what labelers, simulated or human, rank)."""

from __future__ import annotations

from chatforge.data.chat import chat_prompt_ids
from chatforge.generation import GenerationResult, SamplingParams, generate


def chat_answers(model, tokenizer, prompts: list, params: SamplingParams, batch_size: int = 64) -> GenerationResult:
    """Generate the assistant's reply to each prompt (a user message, or a list of messages)."""
    ids = [chat_prompt_ids(tokenizer, prompt) for prompt in prompts]
    return generate(model, tokenizer, ids, params, batch_size=batch_size)


def sample_pools(model, tokenizer, prompts: list, k: int, params: SamplingParams,
                 batch_size: int = 64) -> list[tuple]:
    """[(prompt, distinct responses)] from K samples per prompt: duplicate and empty answers are dropped
    (a ranking of equal texts says nothing) and prompts left with fewer than two are skipped."""
    repeated = [p for p in prompts for _ in range(k)]
    texts = chat_answers(model, tokenizer, repeated, params, batch_size).texts
    pools = []
    for i, prompt in enumerate(prompts):
        distinct: dict[str, str] = {}
        for text in texts[i * k:(i + 1) * k]:
            if text.strip():
                distinct.setdefault(text.strip(), text)
        if len(distinct) >= 2:
            pools.append((prompt, list(distinct.values())))
    return pools


def qa_block(question: str, answer: str) -> str:
    """One worked example in the corpus's Q/A format."""
    return f"Question: {question}\nAnswer: {answer}\n\n"


def fewshot_prompt(prompt: str | list[dict], examples: list[tuple[str, str]]) -> str:
    """'Question: ...\\nAnswer: ...' worked examples, then the prompt: the corpus's own Q/A format.

    A chat's earlier turns come after the examples, each user message and the assistant's reply to it
    as a Q/A block, so a follow-up ("Where do they live?") keeps what it refers to; the chat's last
    message (the user's) is the question. System messages have no place in the format and are left out.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    shots = "".join(qa_block(q, a) for q, a in examples)
    asked = None  # the user message waiting for its reply
    for message in messages[:-1]:
        if message["role"] == "user":
            asked = message["content"]
        elif message["role"] == "assistant" and asked is not None:
            shots += qa_block(asked, message["content"])
            asked = None
    return f"{shots}Question: {messages[-1]['content']}\nAnswer:"


def fewshot_answers(model, tokenizer, prompts: list, examples: list[tuple[str, str]], params: SamplingParams,
                    batch_size: int = 64) -> list[str]:
    """A base model's answers in the Q/A format: the completion up to the end of its first line."""
    result = generate(model, tokenizer, [fewshot_prompt(p, examples) for p in prompts], params,
                      batch_size=batch_size)
    return [text.split("\n")[0].strip() for text in result.texts]
