"""Inference: generation with one or several adapters on one base, merging adapters into their
base (verified), and the float64 execution the merge check computes in."""

from loratk.engine.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "load_session": "generation", "GenerationSettings": "generation", "merge": "merging",
    "float64_execution": "high_precision",
})
