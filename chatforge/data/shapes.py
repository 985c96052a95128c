"""The record shapes people's data comes in, each read into chatforge's messages.

formats.py reads files and applies the rules; this module turns one record (a dict) into
messages (a demonstration) or (prompt messages, responses) (a comparison), or raises a
ChatforgeError naming FILE:LINE and the field. The shape is found per record, by the fields that
mark it (`Shape.marks`), among the shapes of the `format=` asked for; two shapes in one record is
an error. The table of shapes, with examples, is the docstring of formats.py and docs/data-formats.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from chatforge.errors import ChatforgeError

ROLES = ("system", "user", "assistant")
MIN_RESPONSES, MAX_RESPONSES = 2, 9
FORMATS = ("auto", "chatforge", "trl", "alpaca", "sharegpt", "openai", "hh")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


class Skip(Exception):
    """A record to leave out and count under `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Shape:
    """One record shape: the format= names that read it, the fields that mark it, how to read it."""
    name: str                      # as errors print it
    formats: tuple[str, ...]
    keys: tuple[str, ...]          # any of these fields marks a record of this shape...
    fields: tuple[str, ...]        # ...of these top-level fields it reads
    parse: Callable[[dict, str], object]
    when: Callable[[dict], bool] | None = None  # ...when this holds too (it tells shapes with the same keys apart)

    def marks(self, record: dict) -> bool:
        return any(key in record for key in self.keys) and (self.when is None or self.when(record))


def is_message_list(value) -> bool:
    """A non-empty list of objects: messages, as TRL's conversational shapes give chosen and rejected."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def _conversational_pair(record: dict) -> bool:
    return is_message_list(record.get("chosen")) or is_message_list(record.get("rejected"))


def _string_pair(with_prompt: bool) -> Callable[[dict], bool]:
    return lambda record: ("prompt" in record) == with_prompt and not _conversational_pair(record)


# --- demonstrations: each returns the chat's messages, the last one the assistant's -------------------

def _openai_chat(record: dict, source: str) -> list[dict]:
    messages = messages_field(record["messages"], source, "messages")
    check_chat(messages, source, "messages", "role")
    for index, raw in enumerate(record["messages"]):
        # OpenAI's fine-tuning "weight": 0 keeps an assistant turn as context but out of the loss
        weight = raw.get("weight")
        if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
            raise field_error(source, f"messages[{index}].weight", f"expected 0 or 1, got {weight!r}")
        if weight == 0 and messages[index]["role"] == "assistant":
            messages[index]["weight"] = 0
    return messages


def _prompt_response(record: dict, source: str) -> list[dict]:
    return prompt_messages(record, source) + [assistant(string_field(record, "response", source))]


def _prompt_completion(record: dict, source: str) -> list[dict]:
    prompt = prompt_messages(record, source)
    completion = record["completion"]
    if isinstance(completion, str):
        return prompt + [assistant(completion)]
    if not isinstance(completion, list):
        raise field_error(source, "completion", f"expected a string or a list of messages, got {kind_of(completion)}")
    messages = prompt + messages_field(completion, source, "completion")
    check_chat(messages, source, "completion", "role", offset=len(prompt))
    return messages


def _alpaca(record: dict, source: str) -> list[dict]:
    """Alpaca's prompt: the instruction, then the input (when not blank) after a blank line, as its template
    lays them out."""
    instruction, output = string_field(record, "instruction", source), string_field(record, "output", source)
    extra = string_field(record, "input", source) if "input" in record else ""
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": prompt}, assistant(output)]


def _sharegpt(record: dict, source: str) -> list[dict]:
    system = [{"role": "system", "content": string_field(record, "system", source)}] if "system" in record else []
    turns = messages_field(record["conversations"], source, "conversations", "from", "value", SHAREGPT_ROLES)
    check_chat(system + turns, source, "conversations", "from", offset=len(system))
    return system + turns


DEMONSTRATION_SHAPES = (
    Shape('{"messages": [...]} (chatforge, OpenAI, TRL)', ("chatforge", "openai", "trl"), ("messages",),
          ("messages",), _openai_chat),
    Shape('{"prompt", "response"}', ("chatforge",), ("response",), ("prompt", "response"), _prompt_response),
    Shape('TRL {"prompt", "completion"}', ("trl",), ("completion",), ("prompt", "completion"), _prompt_completion),
    Shape('Alpaca {"instruction", "input", "output"}', ("alpaca",), ("instruction", "output"),
          ("instruction", "input", "output"), _alpaca),
    Shape('ShareGPT {"conversations": [{"from", "value"}, ...]}', ("sharegpt",), ("conversations",),
          ("conversations", "system"), _sharegpt),
)


# --- comparisons: each returns (prompt messages, responses best first) ------------------------------

def _ranking(record: dict, source: str) -> tuple[list[dict], list[str]]:
    value = record["responses"]
    expected = f"expected a list of {MIN_RESPONSES} to {MAX_RESPONSES} strings, best first"
    if not isinstance(value, list):
        raise field_error(source, "responses", f"{expected}, got {kind_of(value)}")
    if len(value) < MIN_RESPONSES:
        raise field_error(source, "responses", f"{expected}, got {len(value)} (a ranking needs at least 2 responses)")
    if len(value) > MAX_RESPONSES:
        raise field_error(source, "responses", f"{expected}, got {len(value)}; rank at most {MAX_RESPONSES} "
                          "responses per prompt")
    for index, response in enumerate(value):
        if not isinstance(response, str):
            raise field_error(source, f"responses[{index}]", f"expected a string, got {kind_of(response)}")
    return prompt_messages(record, source), list(value)


def _pair(record: dict, source: str) -> tuple[list[dict], list[str]]:
    for name in ("chosen", "rejected"):
        if isinstance(record.get(name), list):  # a list of messages is read as TRL's conversational pair
            raise field_error(source, name, 'expected a string, got list (a conversational pair gives lists of '
                              'messages {"role", "content"})')
    chosen, rejected = string_field(record, "chosen", source), string_field(record, "rejected", source)
    return prompt_messages(record, source), [chosen, rejected]


def _conversational(record: dict, source: str) -> tuple[list[dict], list[str]]:
    """TRL's conversational pair: chosen and rejected are message lists, after an explicit prompt or sharing it."""
    for name in ("chosen", "rejected"):
        if name not in record:
            raise missing(record, source, name, "a list of messages, as the other response is")
        if not isinstance(record[name], list):
            raise field_error(source, name, f"expected a list of messages, as the other response is, got "
                              f"{kind_of(record[name])}")
    chosen, rejected = (messages_field(record[name], source, name) for name in ("chosen", "rejected"))
    if "prompt" in record:
        return prompt_messages(record, source), [_only_reply(chosen, source, "chosen"),
                                                 _only_reply(rejected, source, "rejected")]
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        check_chat(messages, source, name, "role")
    if chosen[:-1] != rejected[:-1]:
        raise Skip("chosen and rejected differ before the last assistant turn")
    return chosen[:-1], [chosen[-1]["content"], rejected[-1]["content"]]


def _only_reply(messages: list[dict], source: str, name: str) -> str:
    if len(messages) != 1:
        raise field_error(source, name,
                          f"expected one assistant message after the prompt, got {len(messages)} messages")
    if messages[0]["role"] != "assistant":
        raise field_error(source, f"{name}[0].role", f"expected 'assistant' (the reply), got '{messages[0]['role']}'")
    return messages[0]["content"]


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh(record: dict, source: str) -> tuple[list[dict], list[str]]:
    """Two HH transcripts -> (the shared turns as the prompt, [final chosen reply, final rejected reply])."""
    chosen, rejected = string_field(record, "chosen", source), string_field(record, "rejected", source)
    chosen_turns, rejected_turns = _hh_turns(chosen, source, "chosen"), _hh_turns(rejected, source, "rejected")
    if chosen_turns[-1][0] != "assistant" or rejected_turns[-1][0] != "assistant":
        raise Skip("HH transcript does not end with an assistant turn")
    if chosen_turns[:-1] != rejected_turns[:-1]:
        raise Skip("HH transcripts differ before the last assistant turn")
    prompt = [{"role": role, "content": content} for role, content in chosen_turns[:-1]]
    return prompt, [chosen_turns[-1][1], rejected_turns[-1][1]]


def _hh_turns(transcript: str, source: str, name: str) -> list[tuple[str, str]]:
    parts = _HH_TURN.split(transcript.lstrip("\n"))  # [text before the first turn, role, text, role, text, ...]
    if len(parts) < 3 or parts[0].strip():
        raise field_error(source, name, "expected an Anthropic HH transcript '\\n\\nHuman: ...\\n\\nAssistant: ...' "
                          "(or add a 'prompt' field to give the prompt separately)")
    return [(_HH_ROLES[role], text.strip()) for role, text in zip(parts[1::2], parts[2::2])]


PAIR = ("chosen", "rejected")
COMPARISON_SHAPES = (
    Shape('{"prompt", "responses": [best, ..., worst]}', ("chatforge",), ("responses",), ("prompt", "responses"),
          _ranking),
    Shape('{"prompt", "chosen", "rejected"} (chatforge, TRL)', ("chatforge", "trl"), PAIR, ("prompt", *PAIR), _pair,
          _string_pair(with_prompt=True)),
    Shape('Anthropic HH {"chosen", "rejected"} transcripts', ("chatforge", "hh"), PAIR, PAIR, _hh,
          _string_pair(with_prompt=False)),
    Shape('TRL conversational {"prompt"?, "chosen": [messages], "rejected": [messages]}', ("trl",), PAIR,
          ("prompt", *PAIR), _conversational, _conversational_pair),
)


# --- finding a record's shape -----------------------------------------------------------------------

def shapes_of(format: str, shapes: tuple[Shape, ...], what: str) -> tuple[Shape, ...]:
    """The shapes `format` reads among `shapes`; an unknown format, or one with none, is an error naming the field."""
    if format not in FORMATS:
        raise ChatforgeError(f"field 'format': unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    chosen = tuple(shape for shape in shapes if format == "auto" or format in shape.formats)
    if not chosen:
        readers = sorted({name for shape in shapes for name in shape.formats})
        raise ChatforgeError(f"field 'format': format={format} has no {what} shape; use auto or one of "
                             f"{', '.join(readers)}")
    return chosen


def parse_record(record: dict, source: str, shapes: tuple[Shape, ...], every: tuple[Shape, ...]):
    """Read `record` with the one shape among `shapes` its fields mark; `every` (all shapes) names a near miss."""
    found = [shape for shape in shapes if shape.marks(record)]
    if len(found) > 1:
        first, second = (next(key for key in shape.keys if key in record) for shape in found[:2])
        raise field_error(source, first, f"give either '{first}' ({found[0].name}) or '{second}' ({found[1].name}), "
                          "not both")
    if found:
        return found[0].parse(record, source)
    # no shape: name the missing field of the shape sharing most fields with the record
    nearest = max(shapes, key=lambda shape: sum(name in record for name in shape.fields))
    expected = "; ".join(shape.name for shape in shapes)
    expected = (f"one of: {expected}" if len(shapes) > 1 else expected)
    other = next((shape for shape in every if shape not in shapes and shape.marks(record)), None)
    expected += f" (it looks like {other.name}: set format=auto or format={other.formats[0]})" if other else ""
    absent = next((name for name in (*nearest.keys, *nearest.fields) if name not in record), None)
    if absent is None:  # all its fields are there, yet of the wrong kind (say, a 'prompt' beside HH transcripts)
        raise field_error(source, nearest.fields[0], f"this record is not {expected}")
    raise missing(record, source, absent, expected)


def field_names(shapes: tuple[Shape, ...]) -> list[str]:
    """The top-level fields `shapes` read (those a field mapping may rename), comparisons' labeler included."""
    names = dict.fromkeys(name for shape in shapes for name in shape.fields)
    if any("chosen" in shape.fields for shape in shapes):
        names["labeler"] = None
    return list(names)


def check_fields(fields: dict, shapes: tuple[Shape, ...], where: str) -> None:
    """A field mapping {shape field: the file's field}: names `shapes` read, values distinct non-empty strings."""
    known = field_names(shapes)
    for name, column in fields.items():
        if name not in known:
            raise ChatforgeError(f"{where}: field 'fields.{name}': unknown field name; expected one of "
                                 f"{', '.join(known)}")
        if not isinstance(column, str) or not column:
            raise ChatforgeError(f"{where}: field 'fields.{name}': expected the name of a field in the data, "
                                 f"got {column!r}")
    columns = list(fields.values())
    for column in columns:
        if columns.count(column) > 1:
            names = [name for name, value in fields.items() if value == column]
            raise ChatforgeError(f"{where}: field 'fields.{names[1]}': '{column}' is mapped to "
                                 f"{' and '.join(names)}; map it to one")


# --- messages and prompts ---------------------------------------------------------------------------

def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def prompt_messages(record: dict, source: str) -> list[dict]:
    """The record's `prompt`, a string (one user message) or a list of messages not ending with the assistant's."""
    if "prompt" not in record:
        raise missing(record, source, "prompt", "a string or a list of messages")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list):
        raise field_error(source, "prompt", f"expected a string or a list of messages, got {kind_of(prompt)}")
    messages = messages_field(prompt, source, "prompt")
    if messages and messages[-1]["role"] == "assistant":
        raise field_error(source, f"prompt[{len(messages) - 1}].role", "the last prompt message must not be the "
                          "assistant's (the response follows it); move it into the response")
    return messages


def messages_field(value, source: str, name: str, role_key: str = "role", text_key: str = "content",
                   roles: dict | None = None) -> list[dict]:
    """A list of {role_key, text_key} messages (other keys are dropped) as {"role", "content"}, each role
    known to `roles` (the file's name -> chatforge's; by default ROLES as they are)."""
    roles = roles or {role: role for role in ROLES}
    shape = f'{{"{role_key}", "{text_key}"}}'
    if not isinstance(value, list):
        raise field_error(source, name, f"expected a list of messages {shape}, got {kind_of(value)}")
    messages = []
    for index, message in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise field_error(source, where, f"expected a message {shape}, got {kind_of(message)}")
        role, text = string_field(message, role_key, source, where), string_field(message, text_key, source, where)
        if role not in roles:
            raise field_error(source, f"{where}.{role_key}", f"unknown role '{role}' in message {index}; "
                              f"expected one of {', '.join(roles)}")
        messages.append({"role": roles[role], "content": text})
    return messages


def check_chat(messages: list[dict], source: str, name: str, role_key: str, offset: int = 0) -> None:
    """A chat to learn from ends with one assistant reply; `name[i - offset].role_key` names a wrong turn."""
    if len(messages) == offset:
        raise field_error(source, name, "expected a list of messages ending with the assistant's reply, got []")
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        raise field_error(source, f"{name}[{last - offset}].{role_key}", "the last message must be the assistant's "
                          f"reply (the text SFT learns), got '{messages[last]['role']}'")
    if last > 0 and messages[last - 1]["role"] == "assistant":
        raise field_error(source, f"{name}[{last - 1 - offset}].{role_key}", "the message before the last reply "
                          "must not be the assistant's; join the two assistant messages")


# --- error messages ---------------------------------------------------------------------------------

def string_field(record: dict, name: str, source: str, parent: str | None = None) -> str:
    """record[name] as a string, or an error naming the field."""
    where = f"{parent}.{name}" if parent else name
    if name not in record:
        raise missing(record, source, where, "a string")
    value = record[name]
    if not isinstance(value, str):
        raise field_error(source, where, f"expected a string, got {kind_of(value)}")
    return value


def field_error(source: str, name: str, message: str) -> ChatforgeError:
    return ChatforgeError(f"{source}: field '{name}': {message}")


def missing(record: dict, source: str, name: str, expected: str) -> ChatforgeError:
    return ChatforgeError(f"{source}: field '{name}' is missing (found {sorted(record)}); expected {expected}")


def kind_of(value) -> str:
    """The JSON name of a value's type, as users see it in their files."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)
