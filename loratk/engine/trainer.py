"""loratk's Trainer: the transformers Trainer with the fused, logits-free loss when it is exact."""

from __future__ import annotations

from transformers import Trainer

from loratk.engine.loss import fused_loss_sum, head_weight_if_fusable


class LoratkTrainer(Trainer):
    def __init__(self, *args, fused_loss: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_weight = head_weight_if_fusable(self.model) if fused_loss else None
        if self.head_weight is not None:
            # compute_loss below normalises by the tokens of the whole accumulated batch.
            self.loss_is_scaled_for_ga = True

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
