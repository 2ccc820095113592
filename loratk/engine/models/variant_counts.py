"""What a LoRA variant trains, counted from a model's shapes: the adapters at their (per-module)
ranks, DoRA's magnitude vectors, the full copies peft keeps of ``modules_to_save``, and the rows
of new tokens. Arithmetic only, shared by ``inspect-modules`` and ``estimate-memory``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from loratk.errors import UsageError

EMBEDDING_NAMES = frozenset({"embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings"})
HEAD_NAMES = frozenset({"lm_head", "embed_out", "output"})


@dataclass(frozen=True)
class VariantCounts:
    lora: int  # lora_A and lora_B
    dora_magnitudes: int = 0  # one per output feature of each DoRA target
    full_modules: int = 0  # modules_to_save: trained (and saved) in full, beside the frozen original
    token_rows: int = 0  # new tokens' embedding (and untied head) rows

    @property
    def trainable(self) -> int:
        return self.lora + self.dora_magnitudes + self.full_modules + self.token_rows


def variant_counts(groups, targets, rank: int, *, hidden: int, vocab: int, head_tied: bool,
                   rank_pattern: Mapping[str, int] | None = None, use_dora: bool = False,
                   modules_to_save: Iterable[str] = (), new_tokens: int = 0) -> VariantCounts:
    """The counts for ``groups`` (LinearGroups) adapted at ``targets``. ``rank_pattern`` keys are
    matched against the modules' short names (peft also takes longer names and regexes)."""
    pattern, saved = dict(rank_pattern or {}), set(modules_to_save)
    # peft trains a module named in modules_to_save in full, without an adapter
    chosen = [g for g in groups if (targets == "all-linear" or g.name in targets) and g.name not in saved]
    lora = sum(g.lora_parameters(pattern.get(g.name, rank)) for g in chosen)
    magnitudes = sum(g.count * g.out_features for g in chosen) if use_dora else 0
    by_name = {g.name: g.parameters for g in groups}
    full = 0
    for name in modules_to_save:
        if name in by_name:
            full += by_name[name]
        elif name in EMBEDDING_NAMES or name in HEAD_NAMES:
            full += vocab * hidden
        else:
            raise UsageError(f"modules_to_save names {name!r}, which is no Linear module, embedding or head here",
                             f"its Linear modules are: {', '.join(sorted(by_name))}; or lm_head, embed_tokens")
    rows = new_tokens * hidden * (1 if head_tied else 2)
    return VariantCounts(lora, magnitudes, full, rows)
