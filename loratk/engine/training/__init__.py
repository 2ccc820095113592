"""Training: a ``loratk train`` run end to end (preflight checks, the Trainer subclass, checkpoints
and resume, interrupts, progress and metrics, the final adapter and curves, distributed and
quantized training)."""

from loratk.engine.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {"train": "run", "TrainResult": "run", "LoratkTrainer": "trainer"})
