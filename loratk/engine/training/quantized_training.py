"""Quantized base layers that stay fit for training after a forward in eval mode.

bitsandbytes (0.50) repacks a 4-bit layer's weights into a CPU inference layout the first time
the layer runs in eval mode without autograd on a CPU with AVX512-BF16, and keeps that layout.
Later training forwards then go through an inference kernel that has no backward: every gradient
that flows through the frozen base is silently wrong, and layers whose output width is not a
multiple of 32 fail with an assertion instead. A training run does run forwards in eval mode (the
evaluation loop, and ``learn_shared_inputs`` before the first step), so for training the
repacking is switched off: the layers keep the layout their backward needs, and evaluation
dequantizes as training does. Inference (``loratk generate``) keeps bitsandbytes' fast path.
"""

from __future__ import annotations

# bitsandbytes' switch for the CPU inference layout, set per layer when the CPU supports it
INFERENCE_REPACKING_FLAG = "support_avx512bf16_for_cpu"


def keep_training_layout(model) -> int:
    """Switch off the inference repacking of every quantized layer of ``model``; return how many
    layers had it on."""
    switched = 0
    for module in model.modules():
        if getattr(module, INFERENCE_REPACKING_FLAG, False):  # bitsandbytes stores 1 or 0
            setattr(module, INFERENCE_REPACKING_FLAG, False)
            switched += 1
    return switched
