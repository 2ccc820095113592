"""peft's LoRA linear layers with the adapter path as two autograd functions.

peft computes ``result + lora_B(lora_A(dropout(x))) * scaling`` in every adapted layer. Besides
the matmuls, that is a dropout mask and a dropped copy of every layer's input, then three passes
over an output-sized tensor (lora_B's product, the multiplication by scaling, the addition) in
forward and one more (scaling the gradient) in backward, while the adapter itself is only r wide.

Here ``_LoraDown`` computes ``dropout(x) @ A.T`` for every adapted layer that reads the same
input (q/k/v, gate/up: ``loratk.engine.kernels.shared_input`` learns which) as one matmul: one dropped
copy, one set of dropped units, one gradient for the input. Dropout zeroes the units that
``loratk.engine.kernels.lora_dropout`` draws, in the dtype copy lora_A's matmul reads, so layers that share
an input share its dropout mask, as the adapter of a fused qkv projection does. ``_LoraUp`` adds
each layer's ``low @ B.T`` into the base layer's fresh output in place, one ``addmm_`` with the
scaling and the dropout's 1 / (1 - p) folded in. Backward keeps the input (one storage, however many layers read
it), the r-wide products and a seed from which the dropped units are drawn again. Parameters,
names and saved adapters stay peft's; only the layer's class changes, to a subclass whose forward
falls back to peft's for anything but plain LoRA (DoRA and other variants, merged or disabled
adapters, mixed-adapter batches).
"""

from __future__ import annotations

import torch

from loratk.engine.kernels.lora_dropout import dropped_units, zero_units_, zeroed
from loratk.engine.kernels.mixins import mix_into
from loratk.engine.kernels.shared_input import SharedInput, weights_stamp


class _LoraDown(torch.autograd.Function):
    """``zeroed(x) @ cat(A_1, A_2, ...).T`` in ``dtype``, (tokens, r_1 + r_2 + ...): the r-wide
    products of every adapter that reads x, with dropout's units zeroed and not yet rescaled."""

    @staticmethod
    def forward(ctx, x, p: float, seed: int, dtype: torch.dtype, *weights_a):
        x2 = x.reshape(-1, x.shape[-1])
        with torch.autocast(x.device.type, enabled=False):
            units = dropped_units(x2.numel(), p, seed, x2.device) if p else None
            low = zeroed(x2, units, dtype) @ _stacked(weights_a).to(dtype).T
        ctx.save_for_backward(x, *weights_a)
        ctx.p, ctx.seed, ctx.dtype = p, seed, dtype
        return low

    @staticmethod
    def backward(ctx, grad_low: torch.Tensor):
        x, *weights_a = ctx.saved_tensors
        x2 = x.reshape(-1, x.shape[-1])
        needs_x, needs_a = ctx.needs_input_grad[0], any(ctx.needs_input_grad[4:])
        grad_x, grad_a = None, [None] * len(weights_a)
        grad_low = grad_low.to(ctx.dtype)
        with torch.autocast(x.device.type, enabled=False):
            units = dropped_units(x2.numel(), ctx.p, ctx.seed, x2.device) if ctx.p and (needs_x or needs_a) else None
            if needs_x:
                grad_x = grad_low @ _stacked(weights_a).to(ctx.dtype)
                if units is not None:
                    zero_units_(grad_x, units)
                grad_x = grad_x.to(x.dtype).view(x.shape)
            if needs_a:
                grad = grad_low.T @ zeroed(x2, units, ctx.dtype)
                grad_a = [g.to(w.dtype) for g, w in zip(grad.split([w.shape[0] for w in weights_a]), weights_a)]
        return grad_x, None, None, None, *grad_a


def _stacked(weights_a) -> torch.Tensor:
    """The lora_A weights of the adapters that share an input, one above the other."""
    return weights_a[0] if len(weights_a) == 1 else torch.cat(weights_a)


class _LoraUp(torch.autograd.Function):
    """``result + alpha * low @ B.T`` as one ``addmm`` in the result's dtype, into the result itself
    when it is the base layer's own fresh output (no new output-sized tensor, one pass less)."""

    @staticmethod
    def forward(ctx, result, low, weight_b, alpha: float):
        in_place = result.is_contiguous() and not result._is_view() and not (result.is_leaf and result.requires_grad)
        with torch.autocast(result.device.type, enabled=False):
            factors = low.to(result.dtype), weight_b.to(result.dtype).T
            if in_place:
                result.view(-1, result.shape[-1]).addmm_(*factors, alpha=alpha)
                ctx.mark_dirty(result)
                out = result
            else:
                out = torch.addmm(result.reshape(-1, result.shape[-1]), *factors, alpha=alpha).view(result.shape)
        ctx.save_for_backward(low, weight_b)
        ctx.alpha = alpha
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        low, weight_b = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_low = grad_b = None
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[2]:
                # as (r x tokens) @ (tokens x out), transposed after: the output gradient read in its
                # own row order is 1.2-2.4x faster on CPU than the product with g2.T as written
                grad_b = (low.to(g2.dtype).T @ g2).mul_(ctx.alpha).to(weight_b.dtype).T.contiguous()
            if ctx.needs_input_grad[1]:
                grad_low = (g2 @ weight_b.to(g2.dtype)).to(low.dtype).mul_(ctx.alpha)
        return grad if ctx.needs_input_grad[0] else None, grad_low, grad_b, None


def lora_delta(result, x, weight_a, weight_b, p: float, seed: int, scaling: float, dtype: torch.dtype):
    """``result + scaling * (dropout(x, p) @ A.T) @ B.T`` for one adapter, the rank-r products in ``dtype``."""
    return _LoraUp.apply(result, _LoraDown.apply(x, p, seed, dtype, weight_a), weight_b, scaling / (1 - p))


class FusedLoraForward:
    """Mixed in before a peft LoRA linear class: the plain-LoRA forward as ``_LoraDown`` and ``_LoraUp``."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or any(value is not None for value in kwargs.values()) or not self._fusable():
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x)
        names = [name for name in self.active_adapters if name in self.lora_A]
        for name in names:
            p, dtype = self._adapter_p_and_dtype(name, x)
            # siblings share products with one adapter only: several at once is rare and ambiguous
            low = self._down(name, x, p, dtype, shared=len(names) == 1)
            result = _LoraUp.apply(result, low, self.lora_B[name].weight, self.scaling[name] / (1 - p))
        return result

    def _adapter_p_and_dtype(self, name: str, x: torch.Tensor) -> tuple[float, torch.dtype]:
        dropout = self.lora_dropout[name]
        p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
        # as peft: the autocast dtype under autocast, else the adapter's (x is cast to it)
        autocast = torch.is_autocast_enabled(x.device.type)
        return p, x.dtype if autocast else torch.promote_types(x.dtype, self.lora_A[name].weight.dtype)

    def _down(self, name: str, x: torch.Tensor, p: float, dtype: torch.dtype, shared: bool) -> torch.Tensor:
        """This layer's r-wide product, from a sibling that read the same x or with its partners'."""
        siblings: SharedInput | None = getattr(self, "_loratk_siblings", None) if shared else None
        key = (name, p, dtype, torch.is_grad_enabled())
        if siblings is not None:
            low = siblings.take(self, x, key)
            if low is not None:
                return low
        # the owner's weights identify when a new grouping may start (see loratk.engine.kernels.shared_input)
        stamp = weights_stamp(self.lora_A[name].weight) if torch.is_grad_enabled() else None
        members = [self] if siblings is None else [
            layer for layer in siblings.members(self, stamp) if layer is self or layer._takes_part(name, x, p, dtype)]
        seed = int(torch.randint(0, 2**62, (1,))) if p else 0  # the global generator: seeded runs repeat
        weights = [layer.lora_A[name].weight for layer in members]
        low = _LoraDown.apply(x, p, seed, dtype, *weights)
        lows = low.split([weight.shape[0] for weight in weights], 1) if len(members) > 1 else [low]
        if siblings is not None:  # also with no partners yet: a sibling reading x is proposed as one
            siblings.hold(self, x, key, stamp, dict(zip(members[1:], lows[1:])))
        return lows[0]

    def _takes_part(self, name: str, x: torch.Tensor, p: float, dtype: torch.dtype) -> bool:
        """Whether an owner's product for adapter ``name`` is what this layer would compute from x."""
        names = [active for active in self.active_adapters if active in self.lora_A]
        return (names == [name] and self._fusable() and self.lora_A[name].in_features == x.shape[-1]
                and self._adapter_p_and_dtype(name, x) == (p, dtype))

    def _fusable(self) -> bool:
        if self.disable_adapters or self.merged:
            return False
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            if (name in self.lora_variant or type(self.lora_A[name]) is not torch.nn.Linear
                    or type(self.lora_B[name]) is not torch.nn.Linear or self.lora_A[name].bias is not None
                    or self.lora_B[name].bias is not None
                    or not isinstance(self.lora_dropout[name], (torch.nn.Dropout, torch.nn.Identity))
                    or _gathered_on_call(self.lora_A[name].weight) or _gathered_on_call(self.lora_B[name].weight)):
                return False
        return True


def learn_shared_inputs(model) -> bool:
    """Let the fused layers learn which of them read one input before training starts: two forwards
    of two tokens without autograd, in eval mode (no dropout, so no random numbers are drawn).

    Otherwise the first optimizer step runs ungrouped and the rest grouped, and a run resumed from
    a checkpoint would draw other dropout masks than the uninterrupted run. Returns whether it ran
    (not where ZeRO-3 gathers parameters only inside its engine, which the fused path skips anyway).
    """
    import inspect

    layers = [m for m in model.modules() if isinstance(m, FusedLoraForward) and getattr(m, "_loratk_siblings", None)]
    if not layers or any(_gathered_on_call(param) for param in model.parameters()):
        return False
    device = model.get_input_embeddings().weight.device
    inputs = {"input_ids": torch.zeros(1, 2, dtype=torch.long, device=device), "use_cache": False}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "position_ids" in inspect.signature(base.forward).parameters:
        inputs["position_ids"] = torch.arange(2, device=device)[None]  # per-example attention needs them
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(2):  # the first call proposes partners, the second takes them on
                model(**inputs)
    finally:
        model.train(training)
    return True


def _gathered_on_call(param: torch.Tensor) -> bool:
    """DeepSpeed ZeRO-3 partitions parameters and gathers a module's own when that module is called;
    the fused path reads lora_A and lora_B (and its siblings') weights without calling them."""
    return hasattr(param, "ds_id")


def _plain_forwards() -> set:
    """The forwards of peft's LoRA linear classes whose plain-LoRA path the fused forward replaces."""
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
    changed = mix_into(model, FusedLoraForward,
                       lambda module: isinstance(module, LoraLayer) and type(module).forward in plain)
    for parent in model.modules():  # the layers of one parent may share inputs (q/k/v, gate/up)
        layers = [child for child in parent.children()
                  if isinstance(child, FusedLoraForward) and getattr(child, "_loratk_siblings", None) is None]
        if layers:
            siblings = SharedInput()
            for layer in layers:
                layer._loratk_siblings = siblings
    return changed


_VARIANT_NAMES = {"Dora": "DoRA", "ALora": "aLoRA"}


def unfused_targets(model) -> dict[str, str]:
    """The LoRA targets (by short name) that run peft's own forward, and why: a variant such as
    DoRA, a layer type without a fused forward, or a modified adapter. Fused targets are left out."""
    from peft.tuners.lora import LoraLayer

    reasons: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module, FusedLoraForward):
            reason = f"no fused forward for {type(module).__name__}"
        elif module._fusable():
            continue
        else:
            variants = sorted({_VARIANT_NAMES.get(name, name) for name in (
                type(v).__name__.removesuffix("LinearVariant").removesuffix("Variant")
                for v in module.lora_variant.values())})
            reason = f"{' + '.join(variants)} variant" if variants else "adapter not plain LoRA"
        reasons.setdefault(name.rsplit(".", 1)[-1], set()).add(reason)
    return {target: "; ".join(sorted(why)) for target, why in reasons.items()}
