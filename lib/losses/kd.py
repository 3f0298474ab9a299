"""Logit knowledge distillation (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .pairs import upcast

__all__ = ["kd_loss", "kd_terms"]


def kd_loss(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """Temperature-scaled KL(teacher || student) of the softened class distributions.

    Args:
        logits_s: student logits, (B, K).
        logits_t: teacher logits, (B, K); treated as a constant (the teacher is frozen).
        temperature: softmax temperature T.

    Returns:
        Scalar T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes and averaged over the batch. The T^2
        keeps the gradient magnitude independent of T (Hinton et al., section 2).
    """
    # In fp32 under mixed precision: autocast takes log_softmax in fp32 on CUDA but not on the CPU.
    log_p_s = F.log_softmax(upcast(logits_s) / temperature, dim=1)  # (B, K)
    log_p_t = F.log_softmax(upcast(logits_t.detach()) / temperature, dim=1)  # (B, K)
    # log_target=True: p_t * (log p_t - log p_s) stays finite even where p_t underflows to 0.
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def kd_terms(logits_s: Tensor, logits_t: Tensor, target: Tensor, temperature: float, alpha: float
             ) -> dict[str, Tensor]:
    """The release's KD objective as its two weighted terms (the distillers log each on its own).

    Args:
        logits_s: student logits, (B, K).
        logits_t: teacher logits, (B, K).
        target: class labels, (B,).
        temperature: softmax temperature T of the KD term.
        alpha: weight of the KD term; the cross-entropy gets 1 - alpha.

    Returns:
        {"loss_ce": (1 - alpha) * CE(student, label), "loss_kd": alpha * kd_loss(student, teacher, T)}.
    """
    return {
        "loss_ce": (1.0 - alpha) * F.cross_entropy(logits_s, target),
        "loss_kd": alpha * kd_loss(logits_s, logits_t, temperature),
    }
