"""peft's LoRA linear layers with the adapter path as one autograd function.

peft computes ``result + lora_B(lora_A(dropout(x))) * scaling``. Besides the matmuls, that is a
dropout mask and a dropped copy of every adapted module's input, then three passes over an
output-sized tensor (lora_B's product, the multiplication by scaling, the addition) in forward
and one more (scaling the gradient) in backward, while the adapter itself is only r wide.

Here the same sum is one ``addmm`` into the base layer's output, and dropout zeroes the units
that ``loratk.engine.lora_dropout`` draws in a copy of the input, only while lora_A reads it.
Backward keeps the input (one storage, however many modules read it), the r-wide
``dropout(x) @ A.T`` and a seed from which the dropped units are drawn again. Parameters, names
and saved adapters stay peft's; only the layer's class changes, to a subclass whose forward falls
back to peft's for anything but plain LoRA (DoRA and other variants, merged or disabled adapters,
mixed-adapter batches).
"""

from __future__ import annotations

import torch

from loratk.engine.lora_dropout import dropped_units, zeroed
from loratk.engine.mixins import mix_into


class _LoraDelta(torch.autograd.Function):
    """``result + scaling * (dropout(x, p) @ A.T) @ B.T``, the rank-r products in ``dtype``."""

    @staticmethod
    def forward(ctx, result, x, weight_a, weight_b, p: float, seed: int, scaling: float, dtype: torch.dtype):
        with torch.autocast(x.device.type, enabled=False):
            low = _down(x.reshape(-1, x.shape[-1]), weight_a, p, seed, dtype)
            out = torch.addmm(result.reshape(-1, result.shape[-1]), low.to(result.dtype),
                              weight_b.to(result.dtype).T, alpha=scaling)
        ctx.save_for_backward(x, weight_a, weight_b, low)
        ctx.p, ctx.seed, ctx.scaling, ctx.dtype = p, seed, scaling, dtype
        return out.view(result.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight_a, weight_b, low = ctx.saved_tensors
        p, dtype = ctx.p, ctx.dtype
        x2 = x.reshape(-1, x.shape[-1])
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_a = grad_b = None
        with torch.autocast(x.device.type, enabled=False):
            if ctx.needs_input_grad[3]:
                grad_b = (g2.T @ low.to(g2.dtype)).mul_(ctx.scaling).to(weight_b.dtype)
            # the gradient of the kept units' r-wide product, 1 / (1 - p) included
            grad_low = (g2 @ weight_b.to(g2.dtype)).to(dtype).mul_(ctx.scaling / (1 - p))
            needs_units = p and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
            dropped = dropped_units(x2.numel(), p, ctx.seed, x2.device) if needs_units else None
            if ctx.needs_input_grad[1]:
                grad_x = grad_low @ weight_a.to(dtype)
                if dropped is not None:
                    grad_x.view(-1).index_fill_(0, dropped, 0)
                grad_x = grad_x.to(x.dtype).view(x.shape)
            if ctx.needs_input_grad[2]:
                grad_a = (grad_low.T @ zeroed(x2, dropped, dtype)).to(weight_a.dtype)
        return grad if ctx.needs_input_grad[0] else None, grad_x, grad_a, grad_b, None, None, None, None


def _down(x2: torch.Tensor, weight_a: torch.Tensor, p: float, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """``dropout(x2, p) @ A.T`` in ``dtype``, the 1 / (1 - p) applied to the r-wide product."""
    if not p:
        return x2.to(dtype) @ weight_a.to(dtype).T
    kept = zeroed(x2, dropped_units(x2.numel(), p, seed, x2.device), dtype)
    return (kept @ weight_a.to(dtype).T).mul_(1 / (1 - p))


class FusedLoraForward:
    """Mixed in before a peft LoRA linear class: the plain-LoRA forward as ``_LoraDelta``."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or any(value is not None for value in kwargs.values()) or not self._fusable():
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x)
        autocast = torch.is_autocast_enabled(x.device.type)
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            weight_a = self.lora_A[name].weight
            dropout = self.lora_dropout[name]
            p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
            # as peft: the autocast dtype under autocast, else the adapter's (x is cast to it)
            dtype = x.dtype if autocast else torch.promote_types(x.dtype, weight_a.dtype)
            seed = int(torch.randint(0, 2**62, (1,))) if p else 0  # the global generator: seeded runs repeat
            result = _LoraDelta.apply(result, x, weight_a, self.lora_B[name].weight, p, seed,
                                      self.scaling[name], dtype)
        return result

    def _fusable(self) -> bool:
        if self.disable_adapters or self.merged:
            return False
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            if (name in self.lora_variant or type(self.lora_A[name]) is not torch.nn.Linear
                    or type(self.lora_B[name]) is not torch.nn.Linear or self.lora_A[name].bias is not None
                    or self.lora_B[name].bias is not None
                    or not isinstance(self.lora_dropout[name], (torch.nn.Dropout, torch.nn.Identity))):
                return False
        return True


def _plain_forwards() -> set:
    """The forwards of peft's LoRA linear classes whose plain-LoRA path ``_LoraDelta`` replaces."""
    from peft.tuners.lora import bnb
    from peft.tuners.lora.layer import Linear

    forwards = {Linear.forward}
    for name in ("Linear8bitLt", "Linear4bit"):
        if hasattr(bnb, name):
            forwards.add(getattr(bnb, name).forward)
    return forwards


def fuse_lora_layers(model) -> int:
    """Give every peft LoRA linear layer of ``model`` the fused forward; returns how many changed."""
    from peft.tuners.lora import LoraLayer

    plain = _plain_forwards()
    return mix_into(model, FusedLoraForward,
                    lambda module: isinstance(module, LoraLayer) and type(module).forward in plain)
