"""loratk's Trainer: the transformers Trainer with the fused, logits-free loss when it is exact, and a
run that stops at its first non-finite loss or gradient norm instead of saving NaN weights.

The finiteness check costs no host sync of its own: every optimizer step folds "is the loss or the
gradient norm non-finite" into a flag on the device, and the flag is read only where the Trainer
synchronises anyway (to log, evaluate or save) and once at the end. A diverged step is therefore
never saved, evaluated or logged, and the error names the first bad step.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer

from loratk.engine.kernels.loss import fused_loss_sum, head_weight_if_fusable
from loratk.engine.models.weight_files import refusing_unsafe_pickles
from loratk.errors import LoratkError

UNSAFE_CHECKPOINT_HINT = ("resume only from checkpoints this run wrote: move that checkpoint folder away to resume "
                          "from the one before it, or start again without --resume")


class LoratkTrainer(Trainer):
    def __init__(self, *args, fused_loss: bool = True, loraplus_lr_ratio: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.head_weight = head_weight_if_fusable(self.model) if fused_loss else None
        self.pad_token_id = getattr(self.processing_class, "pad_token_id", None)
        if self.head_weight is not None:
            # compute_loss below normalises by the tokens of the whole accumulated batch.
            self.loss_is_scaled_for_ga = True
        self._first_bad = None  # on the device: [step, loss, gradient norm] of the first non-finite step

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        self._note_non_finite(tr_loss, grad_norm)
        if self.control.should_log or self.control.should_evaluate or self.control.should_save:
            self.raise_if_diverged()
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _note_non_finite(self, tr_loss, grad_norm) -> None:
        """Record the first step whose loss (accumulated since the last log) or gradient norm is not
        finite; device tensors only, no synchronisation."""
        import torch

        loss = tr_loss.detach().float().reshape(())
        if grad_norm is None:
            norm, bad = torch.full((), float("nan"), device=loss.device), ~torch.isfinite(loss)
        else:
            norm = torch.as_tensor(grad_norm, device=loss.device).detach().float().reshape(())
            bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
        step = torch.full((), float(self.state.global_step), device=loss.device)  # a fill, not a copy from the host
        values = torch.stack([step, loss, norm])
        if self._first_bad is None:
            self._first_bad = torch.full((3,), -1.0, device=loss.device)
        self._first_bad = torch.where(bad & (self._first_bad[0] < 0), values, self._first_bad)

    def raise_if_diverged(self) -> None:
        """Stop with an error naming the first non-finite step, if there was one (one host sync)."""
        if self._first_bad is None:
            return
        step, loss, norm = self._first_bad.tolist()
        if step < 0:
            return
        from loratk.engine.training.checkpoints import latest_checkpoint

        last = latest_checkpoint(self.args.output_dir)
        what = f"the loss is {loss}" if not _finite(loss) else f"the gradient norm is {norm}"
        kept = (f"the last good checkpoint, {last.name}, is kept" if last is not None
                else "no checkpoint had been saved")
        raise LoratkError(f"training diverged at step {int(step)}: {what}; nothing from that step on was saved "
                          f"({kept})",
                          "lower --learning_rate (or --lora_alpha) and "
                          + ("continue with --resume" if last is not None else "train again"))

    def _save_checkpoint(self, model, trial):
        """A checkpoint that cannot be written (a full disk, most often) stops the run with the folder
        named; it has no completion marker, so the last complete checkpoint stays the one resumed from."""
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "write" not in str(exc).lower():
                raise
            from loratk.engine.training.checkpoints import latest_checkpoint

            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            where = getattr(exc, "filename", None) or folder
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            last = latest_checkpoint(self.args.output_dir)
            kept = f"{last.name} is intact and is the one --resume continues from" if last else "no checkpoint is complete"
            raise LoratkError(f"could not write checkpoint {where}: {reason} ({kept})",
                              "free some space (or lower --save_total_limit), then rerun with --resume"
                              if last else "free some space, then train again") from exc

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint is None:
            return super().train(**kwargs)
        with refusing_unsafe_pickles(Path(resume_from_checkpoint), UNSAFE_CHECKPOINT_HINT):
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _track_num_input_tokens(self, inputs):
        """Count real tokens: packed rows carry no attention mask, and their padding (which
        may share its id with the end-of-sequence token) is one final segment of pad ids."""
        if "attention_mask" in inputs or "position_ids" not in inputs:
            return super()._track_num_input_tokens(inputs)
        import torch

        padding = tail_padding(inputs["input_ids"], inputs["position_ids"], inputs["labels"], self.pad_token_id)
        count = (inputs["input_ids"].numel() - padding.sum()).to(device=self.args.device, dtype=torch.int64)
        # one host read per step, as transformers' own count makes
        self.state.num_input_tokens_seen += self.accelerator.gather(count).sum().item()

    def create_optimizer(self, model=None):
        """LoRA+ (``loraplus_lr_ratio``): peft's parameter groups, lora_B (and DoRA's magnitudes) at
        ratio x the learning rate, with the optimizer the arguments choose."""
        if self.loraplus_lr_ratio is None or self.optimizer is not None:
            return super().create_optimizer(model)
        from peft.optimizers import create_loraplus_optimizer

        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model if model is None else model)
        kwargs = {key: value for key, value in kwargs.items() if key != "lr"}
        self.optimizer = create_loraplus_optimizer(self.model if model is None else model, optimizer_cls,
                                                   lr=self.args.learning_rate, loraplus_lr_ratio=self.loraplus_lr_ratio,
                                                   loraplus_weight_decay=self.args.weight_decay, **kwargs)
        return self.optimizer

    @property
    def uses_fused_loss(self) -> bool:
        return self.head_weight is not None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.head_weight is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        total, count = fused_loss_sum(model, inputs, self.head_weight)
        if num_items_in_batch is None:
            loss = total / max(count, 1)
        else:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, {"loss": loss}) if return_outputs else loss


def tail_padding(ids, positions, labels, pad_token_id):
    """Per row, the length of the padding segment a packed row ends with (0 when it has none):
    the last segment, when it is not the only one and holds only pad ids with masked labels.
    Computed on the rows' device, without reading anything back to the host."""
    import torch

    if pad_token_id is None:
        return torch.zeros(positions.shape[0], dtype=torch.int64, device=positions.device)
    length = positions.shape[-1]
    starts = positions == 0
    index = torch.arange(length, device=positions.device)
    last_start = torch.where(starts, index, 0).amax(dim=-1, keepdim=True)
    tail = index >= last_start
    padded = ((ids == pad_token_id) & (labels == -100) | ~tail).all(dim=-1) & (starts.sum(dim=-1) >= 2)
    return torch.where(padded, length - last_start.squeeze(-1), 0)


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")
