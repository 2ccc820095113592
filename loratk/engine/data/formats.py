"""Row formats: which layout a dataset's rows have, and each row checked and put in one shape.

Every row becomes an :class:`Example`: either plain ``text`` (loss on every token), a ``prompt``
and a ``completion`` (loss on the completion), or ``messages`` (a chat; loss on assistant turns).

- ``text``: a ``text`` column (or the one named by ``--text_column``);
- ``alpaca``: ``instruction``, optional ``input``, ``output``; the prompt is :data:`ALPACA_PROMPT`
  (or :data:`ALPACA_PROMPT_NO_INPUT` when ``input`` is empty) and the completion is ``output``;
- ``prompt_completion``: ``prompt`` and ``completion`` strings;
- ``messages``: a list of ``{role, content}`` with roles system, user and assistant;
- ``sharegpt``: ``conversations``, a list of ``{from, value}`` (from: system, human/user,
  gpt/assistant).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from loratk.config.suggest import did_you_mean
from loratk.errors import DataError

ROW_FORMATS = ("text", "alpaca", "prompt_completion", "messages", "sharegpt")

# The Stanford Alpaca prompts, so adapters trained here answer prompts written the usual way.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

CHAT_ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


@dataclass
class Example:
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)


def detect_format(columns: Sequence[str], text_column: str = "text", source: str = "the dataset") -> str:
    """The row format a dataset's columns call for."""
    present = set(columns)
    if "messages" in present:
        return "messages"
    if "conversations" in present:
        return "sharegpt"
    if {"instruction", "output"} <= present:
        return "alpaca"
    if {"prompt", "completion"} <= present:
        return "prompt_completion"
    if text_column in present:
        return "text"
    raise DataError(
        f"{source} has no column loratk recognises; its columns are: {', '.join(columns)}",
        f"use a {text_column!r} column (or name yours with --text_column), instruction/input/output, "
        "prompt/completion, messages or conversations",
    )


class RowError(DataError):
    pass


def _string(row: Mapping[str, Any], key: str, where: str, *, required: bool = True, empty_ok: bool = False) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if value is None:  # a table gives a row that lacks one of its columns a null: the two look alike here
        state = "null (or absent from this row)" if key in row else "missing"
        raise RowError(f"{where}: the {key!r} field is {state}",
                       "give every row that field as a string, or remove the row")
    if not isinstance(value, str):
        raise RowError(f"{where}: {key!r} is {type(value).__name__} {value!r:.60}, not a string",
                       "make the field a string")
    if not empty_ok and not value.strip():
        raise RowError(f"{where}: {key!r} is empty", "fill it in, or remove the row")
    return value


def _chat(turns: Any, where: str, key: str, role_key: str, content_key: str, roles: Mapping[str, str]):
    if not isinstance(turns, list) or not turns:
        raise RowError(f"{where}: {key!r} must be a non-empty list of turns, got {turns!r:.60}",
                       f"write {key} as a list of {{{role_key!r}: ..., {content_key!r}: ...}} objects")
    messages = []
    for number, turn in enumerate(turns, 1):
        at = f"{where}, turn {number}"
        if not isinstance(turn, Mapping):
            raise RowError(f"{at}: a turn must be an object, got {turn!r:.60}", f"use {{{role_key!r}, {content_key!r}}}")
        role = _string(turn, role_key, at)
        if role not in roles:
            raise RowError(f"{at}: unknown role {role!r}{did_you_mean(role, list(roles))}",
                           f"use one of: {', '.join(roles)}")
        messages.append({"role": roles[role], "content": _string(turn, content_key, at, empty_ok=True)})
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        raise RowError(f"{where}: the chat has no assistant turn, so there is nothing to learn",
                       "add the assistant's reply, or remove the row")
    if all(not m["content"].strip() for m in answers):
        raise RowError(f"{where}: every assistant turn is empty", "fill in the replies, or remove the row")
    return messages


def to_example(row: Mapping[str, Any], row_format: str, where: str, text_column: str = "text") -> Example:
    """Check one row and bring it to the common shape; errors name ``where`` (e.g. 'row 3 of a.jsonl')."""
    if row_format == "text":
        return Example(text=_string(row, text_column, where))
    if row_format == "alpaca":
        instruction = _string(row, "instruction", where)
        extra = _string(row, "input", where, required=False, empty_ok=True)
        template = ALPACA_PROMPT if extra.strip() else ALPACA_PROMPT_NO_INPUT
        return Example(prompt=template.format(instruction=instruction, input=extra),
                       completion=_string(row, "output", where))
    if row_format == "prompt_completion":
        return Example(prompt=_string(row, "prompt", where, empty_ok=True), completion=_string(row, "completion", where))
    if row_format == "messages":
        return Example(messages=_chat(row.get("messages"), where, "messages", "role", "content",
                                      {r: r for r in CHAT_ROLES}))
    if row_format == "sharegpt":
        return Example(messages=_chat(row.get("conversations"), where, "conversations", "from", "value",
                                      SHAREGPT_ROLES))
    raise ValueError(f"unknown row format {row_format!r}")
