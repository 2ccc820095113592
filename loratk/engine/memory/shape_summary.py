"""Everything inspect-modules and estimate-memory read off a model, as plain data (JSON).

A summary is made once from a model built on the meta device (:meth:`ShapeSummary.of`, which needs
torch); reading one back and reporting from it needs neither torch nor transformers, so
``loratk.engine.memory.shape_store`` can keep summaries and answer both commands in a blink.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from loratk.engine.memory.estimate import ATTENTION_IMPLEMENTATIONS, ModelShape, model_shape
from loratk.engine.models.module_summary import ModuleSummary

FORMAT = 1  # bump when a summary's fields or their meaning change: cached summaries are then rebuilt
_SHAPE_FIELDS = {f.name: f.type for f in dataclasses.fields(ModelShape) if f.name not in ("model_type", "linears")}


@dataclass(frozen=True)
class ShapeSummary:
    """A model's modules, the numbers of its training memory, and the attention ``loratk train`` gives it."""

    modules: ModuleSummary
    shape: ModelShape
    max_position_embeddings: int | None
    attention: str | None  # the model's own attention implementation
    varlen: bool  # loratk's per-example attention is exact for it (up to varlen_window tokens)
    varlen_window: int | None

    @classmethod
    def of(cls, model) -> ShapeSummary:
        """Read a freshly built (meta) model; switches its attention, so use a throwaway model."""
        from loratk.engine.kernels.attention import use_varlen_attention

        config = model.config
        modules = ModuleSummary.of(model)
        shape = model_shape(model)
        attention = getattr(config, "_attn_implementation", None)
        window = getattr(config, "sliding_window", None)
        if window is not None and not getattr(config, "use_sliding_window", True):
            window = None
        # At the window's length the window check passes, so this asks about everything else.
        varlen = use_varlen_attention(model, window or 1)
        return cls(modules, shape, getattr(config, "max_position_embeddings", None), attention, varlen, window)

    def default_attention(self, config) -> str:
        """``loratk.engine.memory.report.default_attention`` for this model and a TrainConfig."""
        if (getattr(config, "packing", None) is not False and self.varlen
                and (self.varlen_window is None or config.max_seq_length <= self.varlen_window)):
            return "loratk_varlen"
        return self.attention if self.attention in ATTENTION_IMPLEMENTATIONS else "sdpa"

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **self.modules.to_dict(),
                "memory": {name: getattr(self.shape, name) for name in _SHAPE_FIELDS},
                "max_position_embeddings": self.max_position_embeddings,
                "attention": {"default": self.attention, "varlen": self.varlen, "varlen_window": self.varlen_window}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapeSummary:
        """The summary :meth:`to_dict` wrote; ValueError (or KeyError, TypeError) when ``data`` is not one."""
        if data.get("format") != FORMAT:
            raise ValueError(f"summary format {data.get('format')!r}, expected {FORMAT}")
        modules = ModuleSummary.from_dict(data)
        memory = data["memory"]
        if set(memory) != set(_SHAPE_FIELDS):
            raise ValueError(f"summary memory fields {sorted(memory)}")
        for name, kind in _SHAPE_FIELDS.items():
            if type(memory[name]).__name__ != kind:
                raise ValueError(f"summary memory field {name}={memory[name]!r} is not {kind}")
        attention = data["attention"]
        return cls(modules, ModelShape(model_type=modules.model_type, linears=modules.linears, **memory),
                   _optional(data["max_position_embeddings"], int), _optional(attention["default"], str),
                   _optional(attention["varlen"], bool, required=True), _optional(attention["varlen_window"], int))


def _optional(value, kind: type, required: bool = False):
    if (value is not None or required) and type(value) is not kind:
        raise ValueError(f"{value!r} is not {kind.__name__}")
    return value
