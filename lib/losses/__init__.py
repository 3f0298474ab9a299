"""Distillation losses: pure functions plus thin modules (lib.distillers.build_distiller configures them)."""

from __future__ import annotations

from .at import ATLoss, at_loss, attention_map
from .dkd import DKDLoss, dkd_loss
from .fkd import FKD_INTERP_MODES, FKDLoss, feature_distillation_loss
from .ickd import ICKDLoss, ickd_loss
from .isrd import SRDecoder, build_decoder, isrd_loss, isrd_scale
from .kd import kd_loss, kd_terms
from .sp import SPLoss, sp_loss

__all__ = [
    "ATLoss",
    "DKDLoss",
    "FKDLoss",
    "FKD_INTERP_MODES",
    "ICKDLoss",
    "SPLoss",
    "SRDecoder",
    "at_loss",
    "attention_map",
    "build_decoder",
    "dkd_loss",
    "feature_distillation_loss",
    "ickd_loss",
    "isrd_loss",
    "isrd_scale",
    "kd_loss",
    "kd_terms",
    "sp_loss",
]
