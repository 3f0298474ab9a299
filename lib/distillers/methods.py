"""One-stage pixel distillation methods: logit KD, DKD, the feature baselines, and ISRD (the paper's)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode

from lib.config import small_crop_size
from lib.losses import build_decoder, isrd_loss, kd_terms
from lib.models.model_builder import feature_shapes
from lib.utils.errors import UserError

from .base import Distiller, StepOutput

__all__ = ["KD", "DKD", "FeatureKD", "ISRD", "build_isrd_decoder"]


class KD(Distiller):
    """Hinton et al.: (1 - alpha) CE + alpha T^2 KL(teacher || student) on the logits."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float, alpha: float):
        super().__init__(student, teacher)
        self.temperature = temperature
        self.alpha = alpha

    def logit_terms(self, logits_s: Tensor, logits_t: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The weighted CE and KD terms (shared by ISRD and TAS)."""
        return kd_terms(logits_s, logits_t, target, self.temperature, self.alpha)

    def forward_train(self, image: Tensor, image_large: Tensor, target: Tensor, epoch: int) -> StepOutput:
        """Student logits and the weighted CE and KD terms."""
        logits_s = self.student(image)
        return logits_s, self.logit_terms(logits_s, self.teacher_forward(image_large), target)


class DKD(Distiller):
    """Zhao et al., CVPR 2022: CE + min(epoch / warmup, 1) T^2 (alpha TCKD + beta NCKD)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, criterion: nn.Module):
        super().__init__(student, teacher)
        self.criterion = criterion  # a DKDLoss: the warmed-up DKD term

    def set_epoch(self, epoch: int) -> None:
        """The warm-up factor of `epoch`, where a compiled step reads it."""
        self.criterion.set_epoch(epoch)

    def forward_train(self, image: Tensor, image_large: Tensor, target: Tensor, epoch: int) -> StepOutput:
        """Student logits and the CE and warmed-up DKD terms."""
        logits_s = self.student(image)
        logits_t = self.teacher_forward(image_large)
        return logits_s, {
            "loss_ce": F.cross_entropy(logits_s, target),
            "loss_dkd": self.criterion(logits_s, logits_t, target, epoch),
        }


class FeatureKD(Distiller):
    """CE + beta * sum of a feature loss over chosen layers (AT: the stages; SP and ICKD: the last one)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, criterion: nn.Module, name: str, beta: float,
                 layers: slice, pre_relu: bool):
        super().__init__(student, teacher)
        self.criterion = criterion
        self.name = name
        self.beta = beta
        self.layers = layers
        self.pre_relu = pre_relu

    def get_learnable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters, plus a trained ICKD embedding."""
        params = super().get_learnable_parameters()
        if hasattr(self.criterion, "learnable_parameters"):
            params += list(self.criterion.learnable_parameters())
        return params

    def extra_modules(self) -> dict[str, nn.Module]:
        """The ICKD embedding (when the criterion has parameters)."""
        return {"criterion": self.criterion} if any(True for _ in self.criterion.parameters()) else {}

    def forward_train(self, image: Tensor, image_large: Tensor, target: Tensor, epoch: int) -> StepOutput:
        """Student logits and the CE and weighted feature terms."""
        logits_s, feats_s = self.student(image, return_feat=True, preReLU=self.pre_relu)
        _, feats_t = self.teacher_forward(image_large, return_feat=True, pre_relu=self.pre_relu)
        losses = self.criterion(feats_s[self.layers], feats_t[self.layers])
        return logits_s, {
            "loss_ce": F.cross_entropy(logits_s, target),
            f"loss_{self.name}": self.beta * sum(losses),
        }


class ISRD(KD):
    """The paper's method: logit KD + eta * L1(decoder(student input feature), large image)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float, alpha: float, decoder: nn.Module,
                 eta: float, position: int):
        super().__init__(student, teacher, temperature, alpha)
        self.decoder = decoder
        self.eta = eta
        self.position = position

    def get_learnable_parameters(self) -> list[nn.Parameter]:
        """The student's and the decoder's parameters."""
        return super().get_learnable_parameters() + list(self.decoder.parameters())

    def extra_modules(self) -> dict[str, nn.Module]:
        """The decoder, trained with the student and saved beside it."""
        return {"decoder": self.decoder}

    def isrd_term(self, feats_s: list[Tensor], image_large: Tensor) -> Tensor:
        """eta * L1 between the decoded input feature (B, 3, CROP, CROP) and the large image."""
        return self.eta * isrd_loss(self.decoder(feats_s[self.position]), image_large)

    def forward_train(self, image: Tensor, image_large: Tensor, target: Tensor, epoch: int) -> StepOutput:
        """Student logits and the weighted CE, KD and ISRD terms."""
        # The release's ISRD script asks for the features before their ReLU (preReLU=True): the same conv1 output
        # at FSR.POSITION 0, the stage outputs before their last ReLU at positions 1-4.
        logits_s, feats_s = self.student(image, return_feat=True, preReLU=True)
        terms = self.logit_terms(logits_s, self.teacher_forward(image_large), target)
        terms["loss_isrd"] = self.isrd_term(feats_s, image_large)
        return logits_s, terms


def build_isrd_decoder(cfg: CfgNode, student: nn.Module) -> nn.Module:
    """The ISRD decoder of the student's feature FSR.POSITION at its input size (a UserError when out of range)."""
    shapes = feature_shapes(student, small_crop_size(cfg))
    if not 0 <= cfg.FSR.POSITION < len(shapes):
        raise UserError(f"FSR.POSITION {cfg.FSR.POSITION} is out of range: {cfg.MODEL.ARCH_S} has "
                        f"{len(shapes)} features (0 = its input module)")
    return build_decoder(shapes[cfg.FSR.POSITION], cfg.DATA.CROP_SIZE)

