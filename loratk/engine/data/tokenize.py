"""Examples to ``input_ids`` and ``labels``: what the model sees and which tokens it learns from.

- plain text: loss on every token, EOS appended;
- prompt + completion (and Alpaca rows, whose prompt is the rendered template): loss on the
  completion and the EOS that ends it;
- chats: rendered with the tokenizer's chat template (the one generation uses; ChatML,
  :data:`DEFAULT_CHAT_TEMPLATE`, when it has none), loss on each assistant reply through its
  end-of-turn token. Whatever the template puts after that token (a newline) is not trained.

``train_on_inputs`` trains every token. Labels use -100 (``IGNORE_INDEX``) for "no loss here".
"""

from __future__ import annotations

from dataclasses import dataclass

from loratk.engine.data.formats import Example
from loratk.errors import DataError

IGNORE_INDEX = -100

# Used only when the tokenizer has no chat template of its own (ChatML, as many models use).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
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


def _reply_end(reply: str, tokenizer) -> int:
    """Where the trained part of a rendered reply ends: just after its end-of-turn (EOS) token."""
    eos = tokenizer.eos_token
    if eos and eos in reply:
        return reply.rindex(eos) + len(eos)
    return len(reply.rstrip())


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
        spans.append((len(before), len(before) + _reply_end(through[len(before):], tokenizer)))
    return full, spans


def tokenize_messages(messages: list[dict], tokenizer, train_on_inputs: bool = False,
                      first_trained_message: int = 0) -> Tokenized:
    """``first_trained_message``: assistant turns before this message are not trained (a preference
    pair's prompt may hold earlier replies; only the answer is trained)."""
    full, spans = assistant_spans(messages, tokenizer)
    spans = spans[sum(1 for m in messages[:first_trained_message] if m.get("role") == "assistant"):]
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    if train_on_inputs:
        return Tokenized(ids, list(ids))
    labels = [token if any(s <= start < e for s, e in spans) else IGNORE_INDEX
              for token, (start, _end) in zip(ids, encoded["offset_mapping"])]
    return Tokenized(ids, labels)


def tokenize_example(example: Example, tokenizer, train_on_inputs: bool = False) -> Tokenized:
    if example.messages:
        return tokenize_messages(example.messages, tokenizer, train_on_inputs)
    if example.completion is not None:
        return tokenize_prompt_completion(example.prompt or "", example.completion, tokenizer, train_on_inputs)
    return tokenize_text(example.text or "", tokenizer)


def target_count(labels: list[int]) -> int:
    """Tokens the model learns to predict (position 0 is never predicted)."""
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)
