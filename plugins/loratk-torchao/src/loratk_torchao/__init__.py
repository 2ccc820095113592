"""loratk plugin: ``--quantization torchao-int8``, torchao's int8 weight-only quantization.

Every linear layer of the frozen base keeps its weight as int8 with one scale per output row
(half the memory of bf16, a quarter of fp32); peft trains LoRA on top of it with
``TorchaoLoraLinear``. Unlike bitsandbytes it runs on CPU as well as on CUDA.

Nothing heavy is imported here: loratk imports plugins on every command, even ``--help``.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from loratk.plugins import hookimpl

__version__ = "0.1.0"

BACKEND = "torchao-int8"


# Once torchao is installed, transformers imports it whenever it loads a model, and torchao then
# warns about each CUDA kernel library a CPU machine cannot load. Expected, so kept quiet.
for _logger in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_logger).setLevel(logging.ERROR)


def build_int8_weight_only(options: Mapping[str, Any]):
    """The ``TorchAoConfig`` transformers loads the base with (``options`` is unused: int8 needs no compute dtype)."""
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(quant_type=Int8WeightOnlyConfig())


# Storage of a quantized Linear layer, for ``loratk estimate-memory``: 8 bits per weight plus one
# float32 scale per output row.
build_int8_weight_only.bits_per_weight = 8.0
build_int8_weight_only.row_scale_bytes = 4


@hookimpl
def register_quantization_backends(register):
    register(BACKEND, build_int8_weight_only)
