"""loratk's Trainer: the transformers Trainer with the fused, logits-free loss when it is exact."""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer

from loratk.engine.kernels.loss import fused_loss_sum, head_weight_if_fusable
from loratk.engine.models.weight_files import refusing_unsafe_pickles

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
