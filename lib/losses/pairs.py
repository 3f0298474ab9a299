"""What the feature losses share: their per-layer application, and their statistics in fp32 under autocast."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def full_precision(f: Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off on f's device: the enclosed ops run in the dtype of their inputs (see upcast).

    Under TRAIN.AMP fp16 a Gram matrix of a deep feature overflows fp16's 65504 (a diagonal entry of SP's
    similarity for ResNet-50's 2048x7x7 output sums 100 352 squares), and F.normalize then gives inf / inf =
    NaN; autocast would cast an fp32 input back to fp16 for the matrix product, so it is switched off here.
    """
    return torch.autocast(f.device.type, enabled=False)


def upcast(f: Tensor) -> Tensor:
    """f in fp32 when it is fp16 or bf16 (an fp64 input, as in the golden tests, stays fp64)."""
    return f.float() if f.dtype in (torch.float16, torch.bfloat16) else f


def per_pair(name: str, loss_fn: Callable[[Tensor, Tensor], Tensor], feats_s: Sequence[Tensor],
             feats_t: Sequence[Tensor], other: str = "teacher") -> list[Tensor]:
    """[loss_fn(f_s, f_t) for each (student, `other`) feature pair], unweighted; ValueError if the counts differ."""
    if len(feats_s) != len(feats_t):
        raise ValueError(f"{name} needs as many student as {other} features, got {len(feats_s)} and {len(feats_t)}")
    return [loss_fn(f_s, f_t) for f_s, f_t in zip(feats_s, feats_t)]
