"""SentencePiece vocabularies (Llama 1/2, Mistral v0.1-v0.3) as llama.cpp's ``llama`` tokenizer.

On the Hugging Face side these are BPE vocabularies with byte fallback, converted from a
SentencePiece model: "▁" stands for a space, and a character outside the vocabulary becomes its
UTF-8 bytes as ``<0xXX>`` tokens. llama.cpp tokenizes them the way SentencePiece does, not with
the merge list: it starts from characters and repeatedly joins the adjacent pair whose
concatenation is a token with the highest score. Each token is scored here by the rank of the
first merge that makes it (minus the rank), so "highest score first" is "earliest merge first",
the order the Hugging Face tokenizer applies its merges in; the merges are written too, for
readers (transformers) that use them.

Spaces differ between the two. llama.cpp (like SentencePiece) puts a "▁" in front of the text at
the start of a prompt and after every special token when ``tokenizer.ggml.add_space_prefix`` is
set, always. transformers 5 rewrites these tokenizers to a ``Metaspace`` pre-tokenizer that adds
it only when the text does not already start with a space, and with ``prepend_scheme="first"``
(its default, ``legacy=False``) only at the very start. No setting of llama.cpp reproduces
"first" everywhere, so the flag is chosen for the text a runtime will see: chat prompts rendered
with the model's template. When those start with a special token (``<s>[INST]``,
``<|im_start|>``), llama.cpp is told not to add the space (the Hugging Face tokenizer adds none
after a special token); then a raw prompt that starts with text loses the "▁" of its first word
in llama.cpp. :func:`tokenizer_from_gguf` rebuilds llama.cpp's rule, and ``--verify`` compares
it with the Hugging Face tokenizer on chat-rendered texts.
"""

from __future__ import annotations

import re

from loratk.errors import ModelError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "▁"
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def is_sentencepiece(spec: dict) -> bool:
    """Whether a tokenizer.json describes a SentencePiece-style vocabulary (BPE with byte fallback)."""
    model = spec.get("model", {})
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def space_rule(spec: dict) -> str:
    """How the Hugging Face tokenizer puts "▁" before text: ``always`` (every piece of text between
    special tokens; the old Prepend normalizer and Metaspace "always"), ``first`` or ``never``."""
    normalizer = spec.get("normalizer") or {}
    steps = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer] if normalizer else []
    pre = spec.get("pre_tokenizer")
    prepends = [step for step in steps if step.get("type") == "Prepend"]
    escapes = any(step.get("type") == "Replace" and step.get("content") == SPACE for step in steps)
    if pre is None and escapes:
        return "always" if prepends and prepends[0].get("prepend") == SPACE else "never"
    if pre and pre.get("type") == "Metaspace" and not steps and pre.get("replacement") == SPACE:
        if pre.get("split", False):
            raise ModelError("GGUF export cannot reproduce this SentencePiece tokenizer: its Metaspace pre-tokenizer "
                             "splits words (split=true), llama.cpp does not", "export with a tokenizer saved with split=false")
        return pre.get("prepend_scheme", "always")
    kinds = [step.get("type") for step in steps] + [pre.get("type") if pre else "no pre-tokenizer"]
    raise ModelError(f"GGUF export does not know how llama.cpp would split text for this SentencePiece tokenizer "
                     f"({' + '.join(map(str, kinds))})",
                     "supported: a Metaspace pre-tokenizer, or the Prepend/Replace normalizer of Llama 2's tokenizer.json")


def add_space_prefix(rule: str, chat_starts_with_added_token: bool) -> bool:
    """llama.cpp's ``add_space_prefix`` that tokenizes chat prompts as the Hugging Face tokenizer does."""
    if rule == "first":
        return not chat_starts_with_added_token
    return rule == "always"


def merge_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """Minus the rank of the first merge that makes each token; 0 for tokens no merge makes."""
    rank: dict[str, int] = {}
    for index, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", "", 1), index)
    return [-float(rank[token] + 1) if token in rank else 0.0 for token in tokens]


def token_type(index: int, token: str, added: dict, unk_id: int | None) -> int:
    if index == unk_id:
        return UNKNOWN
    if index in added:
        return CONTROL if added[index].special else USER_DEFINED
    return BYTE if BYTE_TOKEN.fullmatch(token) else NORMAL


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every pair of tokens whose concatenation is a token, best-scored concatenation first: BPE
    merges that join pieces in SentencePiece's (and llama.cpp's) order."""
    index = {token: i for i, token in enumerate(tokens)}
    pairs = []
    for token, score in zip(tokens, scores):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in index and right in index:
                pairs.append((-score, index[token], index[left], left, right))
    return [(left, right) for *_, left, right in sorted(pairs)]


def sentencepiece_tokenizer(tokens: list[str], scores: list[float], types: list[int], space_prefix: bool):
    """A ``tokenizers.Tokenizer`` that tokenizes as llama.cpp does with this vocabulary."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers

    unk = next((token for token, kind in zip(tokens, types) if kind == UNKNOWN), None)
    model = models.BPE({token: i for i, token in enumerate(tokens)}, merges_from_scores(tokens, scores),
                       unk_token=unk, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(model)
    # llama.cpp: text = " " + fragment when the flag is set, then every space escaped to "▁".
    escape = normalizers.Replace(" ", SPACE)
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), escape] if space_prefix else [escape])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, types) if kind in (CONTROL, UNKNOWN)])
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t, kind in zip(tokens, types) if kind == USER_DEFINED])
    return tokenizer
