"""Causal-LM loss without full-vocabulary logits.

The language-model head is usually frozen under LoRA, and the loss needs logits only where a
label is trained. So loratk asks the model for the final hidden states (with the head swapped for
an identity while the model runs), keeps those of the trained positions and computes the
cross-entropy chunk by chunk, producing the gradient for the hidden states in the same pass. At
no time does a ``tokens x vocabulary`` fp32 tensor exist for the whole batch (49k x 4k tokens is
800 MB per copy), and prompt positions whose labels are masked cost no head compute at all.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator

import torch

IGNORE_INDEX = -100
DEFAULT_CHUNK = 256  # rows of logits alive at once: 256 x 49k vocabulary x 2 B (bf16 head) = 25 MB
SOFTMAX_ROWS = 32  # rows of a half-precision chunk in fp32 at once: 32 x 49k x 4 B = 6 MB, in cache
# Models that transform logits after the head (soft-capping, scaling) use the plain path.
_POST_HEAD_ATTRIBUTES = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class LinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of ``hidden @ weight.T`` against ``targets``, in chunks.

    The weight is frozen: only the hidden states get a gradient, computed during the forward
    pass chunk by chunk (softmax minus one-hot, times the weight) and kept instead of the logits.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):
        losses, grad = _chunked_token_losses(hidden, weight, targets, chunk, ctx.needs_input_grad[0])
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        return losses.sum()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None


class LinearTokenLosses(torch.autograd.Function):
    """Cross-entropy of each row of ``hidden @ weight.T`` against ``targets`` (minus the log-probability
    of each target), in chunks, as :class:`LinearCrossEntropy` computes it. Each row's loss has a
    gradient of its own (preference losses weigh the tokens of each sequence differently), so the
    gradient kept is per row and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):
        losses, grad = _chunked_token_losses(hidden, weight, targets, chunk, ctx.needs_input_grad[0])
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        return losses

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output[:, None].to(grad.dtype), None, None, None


def _chunked_token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                          want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(fp32 loss of each row, the gradient of each row's loss for ``hidden`` or None)."""
    losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    grad = torch.empty_like(hidden) if want_grad else None
    # Buffers serve every chunk: a fresh chunk-sized tensor per step of the loop would cost its
    # page faults again each time (tens of ms on CPU). A head in fp32 writes its logits into the
    # fp32 buffer, where the softmax runs in place. A half-precision head writes a half chunk,
    # and the fp32 softmax runs on SOFTMAX_ROWS of it at a time, in a buffer that stays in cache.
    rows = min(chunk, hidden.shape[0])
    half = weight.dtype != torch.float32
    size = (min(rows, SOFTMAX_ROWS) if half else rows, weight.shape[0])
    buffer = torch.empty(size, dtype=torch.float32, device=hidden.device)
    logits_buffer = torch.empty((rows, weight.shape[0]), dtype=weight.dtype, device=hidden.device) if half else buffer
    with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit here
        for start in range(0, hidden.shape[0], chunk):
            target = targets[start:start + chunk]
            count = target.shape[0]
            # the head's precision, as the model would compute it
            logits = torch.matmul(hidden[start:start + chunk].to(weight.dtype), weight.T, out=logits_buffer[:count])
            if not half:
                losses[start:start + count] = _softmax_minus_one_hot_(logits, target)
            else:
                for first in range(0, count, SOFTMAX_ROWS):
                    part = logits[first:first + SOFTMAX_ROWS]
                    scores = buffer[:part.shape[0]].copy_(part)
                    at = start + first
                    losses[at:at + part.shape[0]] = _softmax_minus_one_hot_(scores, target[first:first + SOFTMAX_ROWS])
                    part.copy_(scores)
            if grad is not None:
                grad[start:start + chunk] = (logits @ weight).to(hidden.dtype)
    return losses, grad


def _softmax_minus_one_hot_(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of each fp32 ``logits`` row; turns them into softmax minus one-hot in place."""
    picked = logits.gather(1, target[:, None]).squeeze(1)
    peak = logits.amax(dim=-1, keepdim=True)
    probs = logits.sub_(peak).exp_()
    norm = probs.sum(dim=-1, keepdim=True)
    loss = peak.squeeze(1) + norm.log().squeeze(1) - picked
    probs.div_(norm)
    probs[torch.arange(target.shape[0], device=probs.device), target] -= 1.0
    return loss


class _Identity(torch.nn.Module):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def _causal_lm(model):
    """The transformers model inside peft / DDP wrappers."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def head_weight_if_fusable(model) -> torch.Tensor | None:
    """The frozen head weight when the fused loss is exact for this model, else None."""
    lm = _causal_lm(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    if any(p.requires_grad for p in head.parameters()):
        return None
    config = getattr(lm, "config", None)
    if any(getattr(config, name, None) not in (None, 1.0) for name in _POST_HEAD_ATTRIBUTES):
        return None
    if "logits_to_keep" not in inspect.signature(lm.forward).parameters:
        return None
    return head.weight


@contextlib.contextmanager
def _head_as_identity(model) -> Iterator[None]:
    lm = _causal_lm(model)
    head = lm.get_output_embeddings()
    lm.set_output_embeddings(_Identity())
    try:
        yield
    finally:
        lm.set_output_embeddings(head)


def shifted_targets(inputs: dict) -> torch.Tensor:
    """Labels aligned with the positions that predict them (``shift_labels`` if the collator gave them)."""
    if "shift_labels" in inputs:
        return inputs["shift_labels"]
    labels = inputs["labels"]
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def fused_loss_sum(model, inputs: dict, weight: torch.Tensor, chunk: int = DEFAULT_CHUNK):
    """(sum of token losses, number of trained tokens) for a batch, via the fused path."""
    targets = shifted_targets(inputs)
    model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
    with _head_as_identity(model):
        hidden = model(**model_inputs, use_cache=False).logits  # (batch, positions, hidden)
    # The step's one host sync (how many positions are trained), made once the forward is queued:
    # on a GPU it waits for the forward rather than holding it back.
    trained = (targets != IGNORE_INDEX).flatten().nonzero().squeeze(1)
    selected = hidden.flatten(0, 1).index_select(0, trained)
    total = LinearCrossEntropy.apply(selected, weight, targets.flatten().index_select(0, trained), chunk)
    return total, selected.shape[0]
