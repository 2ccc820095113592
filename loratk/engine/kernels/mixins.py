"""Give chosen modules of a model a mixin's methods by swapping their class for a subclass.

The subclass (``Fused<Name>``, made once per mixin and class) puts the mixin before the original
class, so ``isinstance`` checks, parameters and state-dict names stay as they were. ``same_code``
tells whether a module's forward is a known one, bytecode for bytecode, before a mixin replaces it.
"""

from __future__ import annotations

from typing import Callable

_SUBCLASSES: dict[tuple[type, type], type] = {}


def same_code(a, b) -> bool:
    """Whether two functions have the same bytecode, constants and names: the same computation."""
    a, b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return (a is not None and b is not None and a.co_code == b.co_code and a.co_consts == b.co_consts
            and a.co_names == b.co_names)


def mix_into(model, mixin: type, applies: Callable[[object], bool]) -> int:
    """Put ``mixin`` in front of the class of every module of ``model`` that ``applies`` accepts
    and does not have it yet; return how many modules changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, mixin) or not applies(module):
            continue
        cls = type(module)
        if (mixin, cls) not in _SUBCLASSES:
            _SUBCLASSES[mixin, cls] = type(f"Fused{cls.__name__}", (mixin, cls), {"__module__": mixin.__module__})
        module.__class__ = _SUBCLASSES[mixin, cls]
        changed += 1
    return changed
