"""loratk's Trainer for preference pairs (DPO, ORPO, SimPO).

Each batch's chosen and rejected answers go through the model in one forward (packed in one row
where attention runs per example, see :class:`loratk.engine.data.preference.PairCollator`). DPO's
reference is the same base with the LoRA adapter switched off (peft's ``disable_adapter``), run
without gradients, so no second model is held; with ``--precompute_ref_log_probs`` its
log-probabilities arrive with the batch instead (``loratk.engine.training.reference``).
Metrics are averaged over the logging interval and logged under TRL's names.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from loratk.engine.training.preference_loss import PreferenceSettings, preference_loss, sequence_log_probs
from loratk.engine.training.trainer import LoratkTrainer


class PreferenceTrainer(LoratkTrainer):
    def __init__(self, *args, preference: PreferenceSettings, **kwargs):
        super().__init__(*args, **kwargs)
        self.preference = preference
        self.loss_is_scaled_for_ga = False  # a mean over the micro-batch's pairs; the Trainer divides by the steps
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def reference_log_probs(self, model, inputs) -> torch.Tensor:
        """The (2B,) answer log-probabilities under the base model (the adapter disabled)."""
        if "ref_logps" in inputs:
            return inputs["ref_logps"]
        peft_model = self.accelerator.unwrap_model(model)
        with torch.no_grad(), peft_model.disable_adapter():
            return sequence_log_probs(peft_model, inputs, self.head_weight).sums

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The reference pass first: it keeps no activations, so it adds nothing to the policy's peak.
        reference = self.reference_log_probs(model, inputs) if self.preference.needs_reference else None
        policy = sequence_log_probs(model, inputs, self.head_weight)
        loss, metrics = preference_loss(policy, reference, self.preference)
        mode = "train" if model.training else "eval"
        for name, value in metrics.items():
            self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.reshape(1)).mean().item())
        return (loss, {"loss": loss}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        averaged = {name: sum(values) / len(values) for name, values in self._metrics[mode].items() if values}
        logs.update({f"eval_{k}" if mode == "eval" else k: v for k, v in averaged.items()})
        self._metrics[mode].clear()
        super().log(logs, start_time)


def preference_trainer_options(config, model, data, precision: str, model_path: str):
    """(PreferenceTrainer, its extra keyword arguments) for a run; with ``precompute_ref_log_probs``
    the reference log-probabilities are added to the data first (from the cache when it has them)."""
    if config.precompute_ref_log_probs:
        from loratk.engine.training.reference import add_reference_log_probs

        add_reference_log_probs(model, data, config, precision, model_path)
    return PreferenceTrainer, {"preference": PreferenceSettings.from_config(config)}
