"""The per-layer application shared by the feature losses (AT, SP, ICKD, TAS feature distillation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor


def per_pair(name: str, loss_fn: Callable[[Tensor, Tensor], Tensor], feats_s: Sequence[Tensor],
             feats_t: Sequence[Tensor], other: str = "teacher") -> list[Tensor]:
    """[loss_fn(f_s, f_t) for each (student, `other`) feature pair], unweighted; ValueError if the counts differ."""
    if len(feats_s) != len(feats_t):
        raise ValueError(f"{name} needs as many student as {other} features, got {len(feats_s)} and {len(feats_t)}")
    return [loss_fn(f_s, f_t) for f_s, f_t in zip(feats_s, feats_t)]
