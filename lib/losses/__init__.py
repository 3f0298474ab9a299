"""Distillation losses: pure functions plus thin modules, and the builder of the one-stage KD criterion."""

from __future__ import annotations

from torch import nn
from yacs.config import CfgNode

from lib.utils.errors import UserError

from .at import ATLoss, at_loss, attention_map
from .dkd import DKDLoss, dkd_loss
from .fkd import FKD_INTERP_MODES, FKDLoss, feature_distillation_loss
from .ickd import ICKDLoss, ickd_loss
from .isrd import SRDecoder, build_decoder, isrd_loss, isrd_scale
from .kd import KDLoss, kd_loss, kd_terms
from .sp import SPLoss, sp_loss

__all__ = [
    "ATLoss",
    "DKDLoss",
    "FKDLoss",
    "FKD_INTERP_MODES",
    "ICKDLoss",
    "KDLoss",
    "SPLoss",
    "SRDecoder",
    "at_loss",
    "attention_map",
    "build_criterion",
    "build_decoder",
    "dkd_loss",
    "feature_distillation_loss",
    "ickd_loss",
    "isrd_loss",
    "isrd_scale",
    "kd_loss",
    "kd_terms",
    "sp_loss",
    "CRITERIA",
]

# MODEL.KDTYPE -> criterion class (the release's names).
CRITERIA: dict[str, type[nn.Module]] = {
    "kd": KDLoss,
    "at": ATLoss,
    "sp": SPLoss,
    "ickd": ICKDLoss,
    "dkd": DKDLoss,
}


def build_criterion(cfg: CfgNode, channels_s: int | None = None, channels_t: int | None = None) -> nn.Module:
    """Build the distillation criterion named by MODEL.KDTYPE.

    Args:
        cfg: config; MODEL.KDTYPE picks the criterion, its section (KD, AT, SP, ICKD, DKD) sets it up.
        channels_s: channels of the student's distilled feature (ICKD only).
        channels_t: channels of the teacher's distilled feature (ICKD only).

    Returns:
        The criterion module. Feature methods return one unweighted loss per layer pair.
    """
    name = cfg.MODEL.KDTYPE
    if name not in CRITERIA:
        raise UserError(f"unknown MODEL.KDTYPE {name!r}; valid names: {', '.join(CRITERIA)}")
    if name == "ickd":
        if channels_s is None or channels_t is None:
            raise ValueError("ICKD needs the student's and teacher's feature channels (channels_s, channels_t)")
        return ICKDLoss(cfg, channels_s, channels_t)
    return CRITERIA[name](cfg)
