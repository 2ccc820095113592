"""Rows to ``input_ids`` and ``labels``: what the model sees and which tokens it learns from.

Row kinds, detected from the columns:
- plain text (``text`` or ``--text_column``): loss on every token, EOS appended;
- ``prompt`` + ``completion``: loss on the completion and the EOS that ends it;
- ``messages`` (a chat of ``{role, content}``): rendered with the tokenizer's chat template,
  loss on each assistant turn including its end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from loratk.errors import DataError

IGNORE_INDEX = -100

# Used only when the tokenizer has no chat template of its own (ChatML, as many models use).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def row_kind(columns: Sequence[str], text_column: str) -> str:
    if "messages" in columns:
        return "messages"
    if "prompt" in columns and "completion" in columns:
        return "prompt_completion"
    if text_column in columns:
        return "text"
    raise DataError(
        f"the dataset has no {text_column!r} column; its columns are: {', '.join(columns)}",
        "name the text column with --text_column, or use prompt/completion or messages rows",
    )


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]


def _eos(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def tokenize_text(text: str, tokenizer) -> Tokenized:
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    ids = ids + [t for t in _eos(tokenizer) if not ids or ids[-1] != t]
    return Tokenized(ids, list(ids))


def tokenize_prompt_completion(prompt: str, completion: str, tokenizer, train_on_inputs: bool = False) -> Tokenized:
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + _eos(tokenizer)
    prompt_labels = list(prompt_ids) if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
    return Tokenized(prompt_ids + completion_ids, prompt_labels + completion_ids)


def chat_template(tokenizer) -> str:
    return tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE


def render_chat(messages: list[dict], tokenizer, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=chat_template(tokenizer), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def assistant_spans(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character spans of each assistant reply (with its end-of-turn)."""
    full = render_chat(messages, tokenizer)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = render_chat(messages[:i], tokenizer, add_generation_prompt=True)
        through = render_chat(messages[: i + 1], tokenizer)
        if not full.startswith(through) or not through.startswith(before):
            raise DataError("the chat template does not render conversations prefix by prefix",
                            "use a template whose output for a shorter chat is a prefix of the longer one")
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_messages(messages: list[dict], tokenizer, train_on_inputs: bool = False) -> Tokenized:
    full, spans = assistant_spans(messages, tokenizer)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    if train_on_inputs:
        return Tokenized(ids, list(ids))
    labels = []
    for token, (start, end) in zip(ids, encoded["offset_mapping"]):
        inside = any(start >= s and end <= e and end > start for s, e in spans)
        labels.append(token if inside else IGNORE_INDEX)
    return Tokenized(ids, labels)


def tokenize_row(row: dict[str, Any], kind: str, tokenizer, text_column: str = "text",
                 train_on_inputs: bool = False) -> Tokenized:
    if kind == "messages":
        return tokenize_messages(row["messages"], tokenizer, train_on_inputs)
    if kind == "prompt_completion":
        return tokenize_prompt_completion(row["prompt"], row["completion"], tokenizer, train_on_inputs)
    return tokenize_text(row[text_column], tokenizer)


def tokenize_dataset(data, tokenizer, text_column: str, max_seq_length: int, train_on_inputs: bool = False):
    """Tokenize every row; truncate to ``max_seq_length``; drop rows left with nothing to learn."""
    kind = row_kind(data.column_names, text_column)

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        value = row.get(text_column if kind == "text" else "messages" if kind == "messages" else "completion")
        if value is None or (kind != "messages" and not isinstance(value, str)):
            raise DataError(f"row {index + 1}: {kind} value is {value!r}, not text", "fix or remove that row")
        tokens = tokenize_row(row, kind, tokenizer, text_column, train_on_inputs)
        ids, labels = tokens.input_ids[:max_seq_length], tokens.labels[:max_seq_length]
        return {"input_ids": ids, "labels": labels, "truncated": len(tokens.input_ids) > max_seq_length,
                "trained_tokens": sum(1 for label in labels if label != IGNORE_INDEX)}

    tokenized = data.map(convert, with_indices=True, remove_columns=data.column_names)
    kept = tokenized.filter(lambda row: row["trained_tokens"] > 0)
    if len(kept) == 0:
        raise DataError("every example was dropped: none has a token to learn from after truncation",
                        "raise --max_seq_length or check that responses are not empty")
    return kept, kind
