"""Memory: the estimate of a run's peak (``estimate-memory``), its report, the shape summaries both
model commands answer from without torch (shipped or cached), the gradient-checkpointing
policy that uses it, measured peaks to check the estimate against, and the allocator setting that
returns large frees to the OS."""

from loratk.engine.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "estimate": "estimate", "model_shape": "estimate", "memory_report": "report", "model_summary": "shape_store",
    "choose_gradient_checkpointing": "checkpointing_policy", "measure_peak_bytes": "measure",
    "peak_memory_mb": "measure", "return_large_frees_to_os": "allocator",
})
