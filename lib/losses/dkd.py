"""Decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pairs import upcast

__all__ = ["dkd_loss", "DKDLoss"]


def _split_target(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Split (B, K) logits into the target column (B, 1) and the non-target columns (B, K - 1)."""
    b, k = logits.shape
    target = target.reshape(-1, 1)  # (B, 1)
    # Non-target class indices 0..K-1 without the target, by gather (boolean indexing would sync with the GPU).
    other = torch.arange(k - 1, device=logits.device).expand(b, k - 1)  # (B, K - 1)
    other = other + (other >= target).long()
    return logits.gather(1, target), logits.gather(1, other)


def _binary_log_probs(log_p: Tensor, target: Tensor) -> Tensor:
    """Log of (p_target, 1 - p_target) from log-probabilities (B, K), computed without log(0)."""
    log_p_gt, log_p_other = _split_target(log_p, target)  # (B, 1), (B, K - 1)
    # log(1 - p_gt) = logsumexp of the non-target log-probabilities: exact and finite even when p_gt == 1.
    return torch.cat([log_p_gt, torch.logsumexp(log_p_other, dim=1, keepdim=True)], dim=1)  # (B, 2)


def dkd_loss(
    logits_s: Tensor, logits_t: Tensor, target: Tensor, alpha: float, beta: float, temperature: float
) -> Tensor:
    """Decoupled KD: T^2 * (alpha * TCKD + beta * NCKD) (Zhao et al., Eq. 7).

    Everything is computed in log space so that saturated logits (probabilities exactly 0 or 1) give a finite
    value and gradient; the DKD release takes log of a probability and yields NaN there.

    Args:
        logits_s: student logits, (B, K).
        logits_t: teacher logits, (B, K); treated as a constant (the teacher is frozen).
        target: class labels, (B,).
        alpha: weight of TCKD, the KL of the binary (target, non-target) distributions.
        beta: weight of NCKD, the KL among the non-target classes.
        temperature: softmax temperature T.

    Returns:
        Scalar loss; both KL terms are summed over their classes and averaged over the batch.
    """
    # In fp32 under mixed precision: autocast takes log_softmax in fp32 on CUDA but not on the CPU.
    z_s = upcast(logits_s) / temperature
    z_t = upcast(logits_t.detach()) / temperature
    # TCKD: binary distributions b = (p_target, 1 - p_target) of the full softmax.
    log_b_s = _binary_log_probs(F.log_softmax(z_s, dim=1), target)  # (B, 2)
    log_b_t = _binary_log_probs(F.log_softmax(z_t, dim=1), target)  # (B, 2)
    tckd = F.kl_div(log_b_s, log_b_t, reduction="batchmean", log_target=True)
    # NCKD: softmax over the non-target classes only. The DKD code subtracts 1000 from the target logit; we drop
    # the column instead, the same distribution in the limit, which stays exact when |logits| / T reaches ~1000.
    _, other_s = _split_target(z_s, target)  # (B, K - 1)
    _, other_t = _split_target(z_t, target)  # (B, K - 1)
    nckd = F.kl_div(
        F.log_softmax(other_s, dim=1), F.log_softmax(other_t, dim=1), reduction="batchmean", log_target=True
    )
    return temperature**2 * (alpha * tckd + beta * nckd)


class DKDLoss(nn.Module):
    """DKD with a linear warm-up of its weight over DKD.WARMUP epochs; cross-entropy is added by the caller."""

    def __init__(self, alpha: float, beta: float, temperature: float, warmup: int, release_warmup: bool = False):
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup = warmup
        self.release_warmup = release_warmup
        # The warm-up factor of the epoch being trained, which a compiled step reads (see forward); set_epoch fills it.
        self.register_buffer("factor", torch.tensor(self.warmup_factor(1)), persistent=False)

    def set_epoch(self, epoch: int) -> None:
        """Store warmup_factor(epoch) for a compiled step; called outside it, before the epoch's steps."""
        self.factor.fill_(self.warmup_factor(epoch))

    def warmup_factor(self, epoch: int) -> float:
        """min(epoch / WARMUP, 1) for epochs counted from 1 (DKD's own code); 1 when WARMUP is 0.

        The Pixel Distillation release passed epoch + 1 with an epoch already counted from 1, one epoch ahead of
        its own warm-up; DKD.RELEASE_WARMUP True reproduces that.
        """
        step = epoch + 1 if self.release_warmup else epoch
        return 1.0 if self.warmup <= 0 else min(step / self.warmup, 1.0)

    def forward(self, logits_s: Tensor, logits_t: Tensor, target: Tensor, epoch: int) -> Tensor:
        """Return the warmed-up DKD loss of student logits (B, K) against teacher logits (B, K)."""
        loss = dkd_loss(logits_s, logits_t, target, self.alpha, self.beta, self.temperature)
        if torch.compiler.is_compiling():
            # Read from the Python int `epoch`, the factor would specialise the compiled graph on the epoch: built
            # again every epoch, and run uncompiled once dynamo's limit of 8 builds is reached. A tensor input is not.
            return self.factor * loss
        return self.warmup_factor(epoch) * loss
