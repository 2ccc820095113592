"""Preference pairs: a prompt, a chosen answer and a rejected answer, tokenized for DPO, ORPO and SimPO.

Rows use TRL's preference schema, so datasets made for it work as they are:

- explicit prompt: ``prompt``, ``chosen``, ``rejected`` as strings, or the prompt as a message list
  and the answers as message lists (or strings: one assistant reply each);
- implicit prompt: only ``chosen`` and ``rejected``, two whole texts or conversations that share
  their beginning; the shared part is the prompt.

Chats are rendered with the model's chat template, as SFT chats are. Each answer is tokenized
after the prompt into its own sequence; only the answer's tokens (through its end-of-sequence or
end-of-turn token) are labelled, and the losses need nothing else.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from loratk.engine.data.examples import CUT_OFF, DROPPED_LONG, KEPT, TRUNCATED, DataSettings, convert_rows
from loratk.engine.data.formats import CHAT_ROLES, RowError, _chat
from loratk.engine.data.tokenize import (IGNORE_INDEX, Tokenized, target_count, tokenize_messages,
                                         tokenize_prompt_completion)
from loratk.errors import DataError

PAIR_COLUMNS = ("chosen", "rejected")
SIDES = ("chosen", "rejected")


def check_pair_columns(columns: Sequence[str], source: str) -> str:
    """The row format of a preference source ('preference' or 'implicit_preference')."""
    missing = [c for c in PAIR_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"{source} has no preference pairs: {' and '.join(repr(c) for c in missing)} "
            f"missing (its columns are: {', '.join(columns)})",
            "preference tuning (--method dpo/orpo/simpo) needs rows with 'prompt', 'chosen' and 'rejected' "
            "(or 'chosen' and 'rejected' sharing their beginning); for other rows use --method sft")
    return "preference" if "prompt" in columns else "implicit_preference"


def shared_text_prefix(chosen: str, rejected: str) -> int:
    """Length of the prompt two texts share, ending before the space that starts the answers (as TRL's
    ``extract_prompt`` cuts it: answers keep their leading space, as tokenizers attach it to a word)."""
    end = 0
    while end < min(len(chosen), len(rejected)) and chosen[end] == rejected[end]:
        end += 1
    if end and chosen[end - 1] == " ":
        end -= 1
    return end


def _messages(value: Any) -> bool:
    return isinstance(value, list)


def to_pair(row: Mapping[str, Any], where: str) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected): all strings, or a message list and two lists of answer messages."""
    for side in SIDES:
        value = row.get(side)
        if value is None or isinstance(value, str) and not value.strip():
            raise RowError(f"{where}: {side!r} is missing or empty, so the row is not a preference pair",
                           "give every row a chosen and a rejected answer, or remove the row")
        if not isinstance(value, (str, list)):
            raise RowError(f"{where}: {side!r} is {type(value).__name__} {value!r:.60}, not text or a message list",
                           "write answers as strings or as lists of {'role', 'content'} messages")
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if prompt is None:
        return _implicit(chosen, rejected, where)
    if isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str):
        return prompt, chosen, rejected
    if not _messages(prompt):
        raise RowError(f"{where}: the prompt is text but the answers are message lists",
                       "make the prompt a message list too, or the answers plain strings")
    return (prompt, *(_answer_messages(prompt, row[side], f"{where}, {side}") for side in SIDES))


def _answer_messages(prompt: list, answer: Any, where: str) -> list[dict]:
    turns = [{"role": "assistant", "content": answer}] if isinstance(answer, str) else answer
    checked = _chat(list(prompt) + list(turns), where, "prompt + answer", "role", "content",
                    {r: r for r in CHAT_ROLES})
    answer_turns = checked[len(prompt):]
    if not any(t["role"] == "assistant" and t["content"].strip() for t in answer_turns):
        raise RowError(f"{where}: the answer has no non-empty assistant turn", "fill in the reply, or remove the row")
    return answer_turns


def _implicit(chosen: Any, rejected: Any, where: str) -> tuple[Any, Any, Any]:
    if isinstance(chosen, str) and isinstance(rejected, str):
        end = shared_text_prefix(chosen, rejected)
        if end == 0 or end >= min(len(chosen), len(rejected)):
            raise RowError(f"{where}: chosen and rejected share no prompt (or one contains the other), and the row "
                           "has no 'prompt'", "add a 'prompt' column, or write both as prompt + answer")
        return chosen[:end], chosen[end:], rejected[end:]
    if not (_messages(chosen) and _messages(rejected)):
        raise RowError(f"{where}: chosen and rejected must both be texts or both message lists",
                       "write both answers the same way")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise RowError(f"{where}: the two conversations share no prompt and the row has no 'prompt'",
                       "add a 'prompt' column, or start both conversations with the same messages")
    prompt = chosen[:shared]
    return prompt, *(_answer_messages(prompt, answer[shared:], f"{where}, {side}")
                     for side, answer in zip(SIDES, (chosen, rejected)))


def tokenize_answer(prompt: Any, answer: Any, tokenizer) -> Tokenized:
    """The prompt followed by one answer; labels on the answer only."""
    if isinstance(prompt, str):
        return tokenize_prompt_completion(prompt, answer, tokenizer)
    return tokenize_messages(list(prompt) + list(answer), tokenizer, first_trained_message=len(prompt))


def tokenize_pairs(rows, source: str, tokenizer, settings: DataSettings):
    """(pairs, stats) for one loaded source: chosen_/rejected_ input_ids and labels, and ``length``
    (the tokens of both sequences). A pair is dropped when either answer is (too long with
    ``drop_long``, or cut off entirely by ``max_seq_length``)."""
    row_format = check_pair_columns(rows.column_names, source)
    limit = settings.max_seq_length

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        prompt, *answers = to_pair(row, f"row {index + 1} of {source}")
        out: dict[str, Any] = {"status": KEPT, "length": 0}
        for side, answer in zip(SIDES, answers):
            tokens = tokenize_answer(prompt, answer, tokenizer)
            ids, labels = tokens.input_ids, tokens.labels
            if len(ids) > limit:
                if settings.drop_long:
                    out["status"] = DROPPED_LONG
                elif out["status"] == KEPT:
                    out["status"] = TRUNCATED
                ids, labels = ids[:limit], labels[:limit]
            if out["status"] != DROPPED_LONG and target_count(labels) == 0:
                out["status"] = CUT_OFF
            out.update({f"{side}_input_ids": ids, f"{side}_labels": labels})
            out["length"] += len(ids)
        return out

    return convert_rows(rows, convert, row_format)


def pair_trained_tokens(pairs) -> int:
    return sum(target_count(labels) for side in SIDES for labels in pairs[f"{side}_labels"])


def prompt_length(labels: list[int]) -> int:
    """Tokens before the first trained one: the prompt the two answers share."""
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX and i > 0), len(labels))


class PairCollator:
    """A batch of pairs as 2B sequences, the B chosen answers first, then the B rejected ones.

    ``packed``: one row without padding, ``position_ids`` restarting at each sequence (for
    per-example attention); otherwise rows padded to the longest with an attention mask.
    Precomputed reference log-probabilities travel as ``ref_logps`` in the same order.
    """

    def __init__(self, pad_token_id: int, packed: bool = False):
        self.pad_token_id = pad_token_id
        self.packed = packed

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from loratk.engine.data.collate import PadCollator

        sequences = [{"input_ids": r[f"{side}_input_ids"], "labels": r[f"{side}_labels"]}
                     for side in SIDES for r in rows]
        if self.packed:
            batch = {"input_ids": [t for s in sequences for t in s["input_ids"]],
                     "labels": [t for s in sequences for t in (IGNORE_INDEX, *s["labels"][1:])],
                     "position_ids": [p for s in sequences for p in range(len(s["input_ids"]))]}
            batch = {key: torch.tensor([value], dtype=torch.long) for key, value in batch.items()}
        else:
            batch = PadCollator(self.pad_token_id)(sequences)
        if "ref_logps" in rows[0]:
            batch["ref_logps"] = torch.tensor([r["ref_logps"][i] for i in range(2) for r in rows], dtype=torch.float32)
        return batch
