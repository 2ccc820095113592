"""Preference losses (DPO and its IPO / hinge variants, ORPO, SimPO) from answer log-probabilities.

Every loss here needs, per sequence, only the summed log-probability of its answer tokens (and
their number). Those come from :func:`sequence_log_probs`: the final hidden states at trained
positions only, then the frozen head and log-softmax chunk by chunk (the fused loss's kernel,
``loratk.engine.kernels.loss``), so no ``tokens x vocabulary`` fp32 tensor is ever built. A batch
holds B pairs as 2B sequences, the chosen answers first; in one packed row (``position_ids``
restarting per sequence) or in padded rows.

The formulas and logged metrics follow TRL's DPOTrainer, CPOTrainer (``loss_type="simpo"``) and
ORPOTrainer, so runs compare one to one. ORPO's NLL term covers the chosen answer, as in the
paper (TRL's also covers the prompt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loratk.engine.kernels.loss import (DEFAULT_CHUNK, IGNORE_INDEX, LinearTokenLosses, _head_as_identity,
                                        shifted_targets)

NON_MODEL_KEYS = ("labels", "ref_logps")


@dataclass(frozen=True)
class PreferenceSettings:
    method: str = "dpo"  # dpo, orpo or simpo
    beta: float = 0.1
    loss_type: str = "sigmoid"  # dpo: sigmoid, ipo or hinge
    simpo_gamma: float = 0.5
    orpo_alpha: float = 0.1
    label_smoothing: float = 0.0

    @classmethod
    def from_config(cls, config) -> "PreferenceSettings":
        return cls(config.method, config.beta, config.loss_type, config.simpo_gamma, config.orpo_alpha,
                   config.label_smoothing)

    @property
    def needs_reference(self) -> bool:
        return self.method == "dpo"


@dataclass
class SequenceLogProbs:
    sums: torch.Tensor  # (2B,) summed log-probability of each sequence's answer tokens
    counts: torch.Tensor  # (2B,) how many answer tokens each has

    def halves(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(chosen sums, rejected sums, chosen counts, rejected counts)."""
        return (*self.sums.chunk(2), *self.counts.chunk(2))


def sequence_index(inputs: dict) -> tuple[torch.Tensor, int]:
    """Which sequence each position belongs to, and how many sequences the batch holds."""
    ids = inputs["input_ids"]
    if "attention_mask" not in inputs and "position_ids" in inputs:
        starts = (inputs["position_ids"] == 0).flatten()
        starts[0] = True
        index = starts.long().cumsum(0).view_as(ids) - 1
        return index, int(starts.sum())
    return torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids), ids.shape[0]


def sequence_log_probs(model, inputs: dict, head_weight: torch.Tensor | None,
                       chunk: int = DEFAULT_CHUNK) -> SequenceLogProbs:
    """Summed answer log-probabilities per sequence; through the chunked head when ``head_weight`` is
    given (the model's frozen head, see ``head_weight_if_fusable``), else from the model's logits."""
    targets = shifted_targets(inputs)
    owners, count = sequence_index(inputs)
    model_inputs = {k: v for k, v in inputs.items() if k not in NON_MODEL_KEYS}
    trained = targets != IGNORE_INDEX
    if head_weight is not None:
        keep = trained.any(dim=0).nonzero().squeeze(1)
        with _head_as_identity(model):
            hidden = model(**model_inputs, logits_to_keep=keep, use_cache=False).logits
        mask = targets[:, keep] != IGNORE_INDEX
        token_logps = -LinearTokenLosses.apply(hidden[mask], head_weight, targets[:, keep][mask], chunk)
        owners = owners[:, keep][mask]
    else:
        logits = model(**model_inputs, use_cache=False).logits[trained].float()
        token_logps = logits.log_softmax(-1).gather(1, targets[trained][:, None]).squeeze(1)
        owners = owners[trained]
    zeros = torch.zeros(count, dtype=torch.float32, device=token_logps.device)
    sums = zeros.index_add(0, owners, token_logps.float())
    counts = zeros.index_add(0, owners, torch.ones_like(token_logps, dtype=torch.float32))
    return SequenceLogProbs(sums, counts)


def _smoothed_sigmoid(logits: torch.Tensor, smoothing: float) -> torch.Tensor:
    """-log sigmoid(logits), with the preference assumed flipped with probability ``smoothing``."""
    return -F.logsigmoid(logits) * (1 - smoothing) - F.logsigmoid(-logits) * smoothing


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation on either side of -ln 2."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def preference_loss(policy: SequenceLogProbs, reference: torch.Tensor | None, s: PreferenceSettings):
    """(loss, metrics) for a batch; ``reference``: the reference model's (2B,) sums (DPO only).

    Metrics are TRL's: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
    logps/chosen, logps/rejected (and nll_loss, log_odds_ratio for ORPO), each a mean over the pairs.
    """
    chosen, rejected, chosen_n, rejected_n = policy.halves()
    metrics: dict[str, torch.Tensor] = {}
    if s.method == "dpo":
        ref_chosen, ref_rejected = reference.chunk(2)
        chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
        if s.loss_type == "sigmoid":
            losses = _smoothed_sigmoid(s.beta * (chosen_ratio - rejected_ratio), s.label_smoothing)
        elif s.loss_type == "hinge":
            losses = torch.relu(1 - s.beta * (chosen_ratio - rejected_ratio))
        elif s.loss_type == "ipo":
            # per answer token, as TRL (and the IPO authors) normalise it
            delta = chosen_ratio / chosen_n.clamp(min=1) - rejected_ratio / rejected_n.clamp(min=1)
            losses = (delta - 1 / (2 * s.beta)) ** 2
        else:
            raise ValueError(f"unknown DPO loss_type {s.loss_type!r}")
        loss = losses.mean()
        chosen_rewards, rejected_rewards = s.beta * chosen_ratio.detach(), s.beta * rejected_ratio.detach()
        logged_chosen, logged_rejected = chosen, rejected
    else:  # simpo and orpo work on the mean log-probability per answer token, without a reference
        chosen_mean, rejected_mean = chosen / chosen_n.clamp(min=1), rejected / rejected_n.clamp(min=1)
        logged_chosen, logged_rejected = chosen_mean, rejected_mean
        if s.method == "simpo":
            logits = chosen_mean - rejected_mean - s.simpo_gamma / s.beta
            loss = _smoothed_sigmoid(s.beta * logits, s.label_smoothing).mean()
            scale = s.beta
        elif s.method == "orpo":
            log_odds = (chosen_mean - rejected_mean) - (log1mexp(chosen_mean) - log1mexp(rejected_mean))
            ratio = F.logsigmoid(log_odds)
            nll = -chosen.sum() / chosen_n.sum().clamp(min=1)
            loss = nll - s.orpo_alpha * ratio.mean()
            scale = s.orpo_alpha
            metrics.update({"nll_loss": nll.detach(), "log_odds_ratio": ratio.detach().mean()})
        else:
            raise ValueError(f"unknown preference method {s.method!r}")
        chosen_rewards, rejected_rewards = scale * chosen_mean.detach(), scale * rejected_mean.detach()
    metrics.update({
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": logged_chosen.detach().mean(),
        "logps/rejected": logged_rejected.detach().mean(),
    })
    return loss, metrics
