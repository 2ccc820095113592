"""Which LoRA layers under one parent read the same input tensor, learned while the model runs.

A decoder layer calls ``q_proj``, ``k_proj`` and ``v_proj`` on one hidden-state tensor, and
``gate_proj`` and ``up_proj`` on another. Their adapters' first products can then be one matmul
over one dropped copy of the input, computed when the first of them runs and handed to the others
when they run. Which layers share an input is not declared anywhere: the first layer called with
a fresh tensor owns it, a sibling called with that very tensor (same object, not modified since)
is proposed as the owner's partner, and a partner called with another tensor than its owner's is
proposed for removal. A wrong guess costs an extra product, never a wrong result.

Proposals take effect at the owner's first call after its adapter weights changed
(``weights_stamp``: an optimizer stepped or the weights were updated in place), or at once without
autograd. Gradient checkpointing needs that: a checkpointed layer runs again in backward and must
save the same tensors as in its forward, so the grouping may not change between the two.

The input is held by a weak reference, and a product waits only until its layer runs.
"""

from __future__ import annotations

import weakref
from typing import Any, Hashable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_optimizer_steps = 0


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_step)


def weights_stamp(weight: torch.Tensor) -> Hashable:
    """Changes when ``weight`` may have changed: an in-place update bumps its version, but fused
    optimizers (``AdamW(fused=True)``, transformers' default ``adamw_torch_fused``) do not, so
    every step of any torch optimizer counts too."""
    return weight._version, _optimizer_steps


class SharedInput:
    """The sibling LoRA layers of one parent module, and the products computed ahead for them."""

    def __init__(self) -> None:
        self.partners: dict[Any, list[Any]] = {}  # owner layer -> the layers that read its input
        self._proposed: dict[Any, tuple[list[Any], Hashable]] = {}  # owner -> (partners, stamp then)
        self._clear()

    def _clear(self) -> None:
        self._input: weakref.ref | None = None
        self._version = -1
        self._owner: Any = None
        self._key: Hashable = None
        self._stamp: Hashable = None
        self._pending: dict[Any, Any] = {}

    def _holds(self, x, key: Hashable) -> bool:
        return self._input is not None and self._input() is x and x._version == self._version and self._key == key

    def take(self, layer, x, key: Hashable):
        """The product the owner of this same ``x`` computed for ``layer`` under ``key``, or None.

        Called by every layer before it computes its own; this is where partners are proposed.
        """
        if self._holds(x, key):
            product = self._pending.pop(layer, None)
            if product is not None:
                return product
            if layer is not self._owner:
                self._propose(layer, add=True)
        elif layer in self._pending:  # the owner's input was expected and another came
            del self._pending[layer]
            self._propose(layer, add=False)
        return None

    def _propose(self, layer, add: bool) -> None:
        partners, _ = self._proposed.get(self._owner, (list(self.partners.get(self._owner, ())), self._stamp))
        if add and layer not in partners:
            partners.append(layer)
        elif not add and layer in partners:
            partners.remove(layer)
        self._proposed[self._owner] = partners, self._stamp

    def members(self, owner, stamp: Hashable) -> list:
        """``owner`` and its partners, owner first. ``stamp`` identifies the owner's weights (None
        without autograd); proposals made under another stamp take effect now."""
        proposal = self._proposed.get(owner)
        if proposal is not None and (stamp is None or proposal[1] != stamp):
            self.partners[owner] = proposal[0]
            del self._proposed[owner]
        return [owner, *self.partners.get(owner, ())]

    def hold(self, owner, x, key: Hashable, stamp: Hashable, products: dict) -> None:
        """Keep ``products`` (partner layer -> its product) for the partners' calls with ``x``,
        unless another layer owns x: the first layer called with a tensor owns it."""
        if self._holds(x, key) and owner is not self._owner:
            return
        self._clear()
        self._input, self._version, self._owner, self._key = weakref.ref(x), x._version, owner, key
        self._stamp, self._pending = stamp, dict(products)

    def __getstate__(self) -> dict:  # pickling and deep copies take what was learned, nothing pending
        return {"partners": self.partners}

    def __setstate__(self, state: dict) -> None:
        self.partners, self._proposed = state["partners"], {}
        self._clear()
