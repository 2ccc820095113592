"""Gated (SwiGLU) MLPs that keep two of their intermediate tensors for backward, not three.

transformers' Llama-style MLP computes ``down_proj(silu(gate_proj(x)) * up_proj(x))``. Autograd
keeps the gate projection (for silu's backward) and both factors of the product (for the
product's backward): three ``tokens x intermediate`` tensors per layer, the largest activations of
a decoder layer. Here the product is one autograd function that keeps the gate projection and the
up projection only and recomputes ``silu(gate)`` in backward, one extra pass over the gate: a
third less MLP activation memory. The same operations run in the same dtypes, so outputs and
gradients are bit-identical to transformers'.

Only MLP classes whose forward is Llama's, bytecode for bytecode, and whose activation is SiLU
get this forward (Llama, Mistral, Qwen2/3 and others copy it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loratk.engine.kernels.mixins import mix_into, same_code


class _SiluTimes(torch.autograd.Function):
    """``silu(gate) * up``, keeping gate and up."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_gate = grad_up = None
        if ctx.needs_input_grad[1]:
            grad_up = grad * F.silu(gate)
        if ctx.needs_input_grad[0]:
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        return grad_gate, grad_up


class FusedGatedMLP:
    """Mixed in before a Llama-style MLP class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        return self.down_proj(_SiluTimes.apply(self.gate_proj(x), self.up_proj(x)))


def is_llama_silu_mlp(module) -> bool:
    """Whether ``module`` computes exactly transformers' Llama MLP with a SiLU activation."""
    from transformers.activations import SiLUActivation
    from transformers.models.llama.modeling_llama import LlamaMLP

    return (isinstance(module, torch.nn.Module) and same_code(type(module).forward, LlamaMLP.forward)
            and type(getattr(module, "act_fn", None)) in (SiLUActivation, torch.nn.SiLU))


def fuse_gated_mlps(model) -> int:
    """Give every Llama-style SiLU MLP of ``model`` the two-tensor backward; returns how many."""
    return mix_into(model, FusedGatedMLP, is_llama_silu_mlp)
