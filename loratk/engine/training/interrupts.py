"""Ctrl-C and SIGTERM during training: save a checkpoint at the current step and stop cleanly.

The first signal asks the Trainer to save and stop after the step in flight; a second one exits at
once. Checkpoints are only trusted once marked complete (see checkpoints.py), so exiting mid-save
never corrupts the last good one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator

from transformers import TrainerCallback

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopOnSignal(TrainerCallback):
    def __init__(self):
        self.received: int | None = None

    def handle(self, signum, frame) -> None:
        if self.received is not None:
            print("\nloratk: second interrupt, exiting now; the last complete checkpoint is intact",
                  file=sys.stderr, flush=True)
            os._exit(SIGNAL_EXIT_CODES.get(signum, 130))
        self.received = signum
        print(f"\nloratk: {signal.Signals(signum).name} received: saving a checkpoint at the current step "
              "(interrupt again to exit at once)", file=sys.stderr, flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True

    @property
    def exit_code(self) -> int:
        return SIGNAL_EXIT_CODES.get(self.received, 130)

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopOnSignal"]:
        previous = {sig: signal.signal(sig, self.handle) for sig in SIGNAL_EXIT_CODES}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
