"""Memory: the estimate of a run's peak (``estimate-memory``), its report, the gradient-checkpointing
policy that uses it, measured peaks to check the estimate against, and the allocator setting that
returns large frees to the OS."""

from loratk.engine.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "estimate": "estimate", "model_shape": "estimate", "memory_report": "report",
    "choose_gradient_checkpointing": "checkpointing_policy", "measure_peak_bytes": "measure",
    "peak_memory_mb": "measure", "return_large_frees_to_os": "allocator",
})
