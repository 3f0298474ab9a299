"""Two-stage pixel distillation, TAS: teacher -> assistant -> student (Guo et al., TPAMI 2024; code unreleased).

Stage 1 compresses the model at the large size: the teacher distils into an assistant of the student's
architecture, both at DATA.CROP_SIZE, with a one-stage method (TAS.STAGE1_KDTYPE). It is an ordinary one-stage
experiment run on a config derived from the user's (`assistant_config`), written where `assistant_checkpoint`
says. Stage 2 compresses the input: the frozen assistant at CROP_SIZE distils into the student, the same
architecture at CROP_SIZE / LESSEN_RATIO. Because the two networks now match layer for layer, their intermediate
features can be paired: stage 2 = logit KD + ISRD + feature distillation (lib/losses/fkd.py). Every choice the
paper leaves open is a config key of the TAS section; docs/tas.md lists them. lib/engine/tas.py runs the stages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode

from lib.config import check_cfg, get_cfg, pass_on_the_command_line, small_crop_size
from lib.engine.setup import experiment_name
from lib.losses import FKDLoss
from lib.models.model_builder import check_input_size, feature_shapes, is_vit, parse_arch
from lib.utils.errors import UserError

from .base import StepOutput, network_from_checkpoint
from .methods import ISRD, build_isrd_decoder

__all__ = ["TAS", "assistant_arch", "assistant_checkpoint", "assistant_config", "build_assistant", "build_tas",
           "check_tas_archs", "tas_config", "tas_feature_layers"]

# Every CNN of lib.models has four stages after its input module (ResNet layer1..4, ShuffleNetV2 stage2..4 +
# conv5): stage 2 pairs all four, one TAS.FEAT_WEIGHTS entry each.
CNN_DISTILLED_STAGES = 4

# Keys only stage 2 reads. The stage-1 config resets them to their defaults, so that changing one (a feature
# weight, the student's size) neither changes the assistant's experiment nor stops an interrupted stage 1 from
# resuming. DATA.LESSEN_TYPE is unused at LESSEN_RATIO 1 (no second scale).
_STAGE2_ONLY_KEYS = ("MODEL.MODELDICT_A", "MODEL.MODELDICT_S", "FSR.ETA", "FSR.POSITION", "TAS.FEAT_WEIGHTS",
                     "TAS.VIT_BLOCKS", "TAS.FEAT_INTERP", "DATA.LESSEN_TYPE")


# ---------------------------------------------------------------------------------------------------------------
# Configs of the two stages
# ---------------------------------------------------------------------------------------------------------------
def _same_arch_at(arch: str, size: int) -> str:
    """`arch` at input size `size`: a CNN's name is size-free, a ViT's carries the size."""
    family, vit_size = parse_arch(arch)
    return arch if vit_size is None else f"{family}_{size}"


def assistant_arch(cfg: CfgNode) -> str:
    """MODEL.ARCH_A, or when it is empty the student's architecture at DATA.CROP_SIZE (e.g. vit_tiny_patch16_224)."""
    if cfg.MODEL.ARCH_A:
        return cfg.MODEL.ARCH_A
    if not cfg.MODEL.ARCH_S:
        raise UserError("MODEL.ARCH_A and MODEL.ARCH_S are empty; name the assistant (MODEL.ARCH_A resnet18) or the "
                        "student, whose architecture at DATA.CROP_SIZE the assistant then is")
    return _same_arch_at(cfg.MODEL.ARCH_S, cfg.DATA.CROP_SIZE)


def _check_families(cfg: CfgNode, arch_a: str, arch_s: str) -> None:
    """Stage 2 pairs features layer by layer: the assistant must be the student's architecture at another size."""
    if parse_arch(arch_a)[0] != parse_arch(arch_s)[0]:
        raise UserError(
            f"TAS distils between one architecture at two input sizes, but MODEL.ARCH_A is {arch_a} and MODEL.ARCH_S "
            f"is {arch_s}; set MODEL.ARCH_A {_same_arch_at(arch_s, cfg.DATA.CROP_SIZE)} (or '' to derive it)"
        )


def _reset(stage: CfgNode, full_key: str) -> None:
    section, key = full_key.split(".")
    stage[section][key] = get_cfg()[section][key]


def assistant_config(cfg: CfgNode) -> CfgNode:
    """The frozen config of stage 1: teacher MODEL.ARCH_T -> assistant at DATA.CROP_SIZE with TAS.STAGE1_KDTYPE.

    The assistant takes the student's place of a one-stage experiment: MODEL.ARCH_S := the assistant's
    architecture (PRETRAIN_S := PRETRAIN_A, PRETRAIN_FILE_S := TAS.PRETRAIN_FILE_A), DATA.LESSEN_RATIO := 1,
    MODEL.KDTYPE := TAS.STAGE1_KDTYPE, one run; the keys only stage 2 reads are reset to their defaults.
    """
    arch_a = assistant_arch(cfg)
    if cfg.MODEL.ARCH_S:
        _check_families(cfg, arch_a, cfg.MODEL.ARCH_S)
    if not cfg.MODEL.ARCH_T:
        raise UserError("MODEL.ARCH_T is empty; name the teacher that stage 1 distils into the assistant "
                        "(its name is part of the assistant's folder), e.g. MODEL.ARCH_T resnet50")
    stage = cfg.clone()
    stage.defrost()
    for key in _STAGE2_ONLY_KEYS:
        _reset(stage, key)
    stage.MODEL.ARCH_A = stage.MODEL.ARCH_S = arch_a
    stage.MODEL.PRETRAIN_S = cfg.MODEL.PRETRAIN_A
    stage.MODEL.PRETRAIN_FILE_S = cfg.TAS.PRETRAIN_FILE_A
    stage.MODEL.KDTYPE = cfg.TAS.STAGE1_KDTYPE
    stage.DATA.LESSEN_RATIO = 1.0
    stage.BASIC.NUM_RUNS = 1
    check_cfg(stage)
    stage.freeze()
    return pass_on_the_command_line(cfg, stage)


def assistant_checkpoint(cfg: CfgNode) -> str:
    """Where stage 1 writes the assistant, as a config names it (relative paths stay relative to the repository).

    <OUTPUT_ROOT>/<dataset>/1runs_<STAGE1_KDTYPE>_<teacher>_<crop>_<assistant>_<crop>_seed<seed>_<lr>/ckpt/
    model_best.pth, e.g. ckpt/cub/1runs_kd_resnet50_224_resnet18_224_seed0_0.01/ckpt/model_best.pth.
    """
    stage = assistant_config(cfg)
    name = experiment_name(stage, stage.MODEL.KDTYPE, 1)
    return os.path.join(cfg.BASIC.OUTPUT_ROOT, cfg.DATA.DATASET, name, "ckpt", "model_best.pth")


def tas_config(cfg: CfgNode) -> CfgNode:
    """The frozen config of stage 2: MODEL.ARCH_A derived when empty, MODEL.MODELDICT_A := stage 1's output when empty.

    MODEL.ARCH_T keeps the original teacher, so the experiment folder reads
    <n>runs_tas_<teacher>_<crop>_<student>_<small crop>_seed<seed>_<lr>, the assistant being the student's
    architecture at <crop>. Without a teacher (ARCH_T empty, MODELDICT_A given) the assistant takes its place.
    """
    stage = cfg.clone()
    stage.defrost()
    stage.MODEL.ARCH_A = assistant_arch(cfg)
    if not stage.MODEL.MODELDICT_A:
        stage.MODEL.MODELDICT_A = assistant_checkpoint(cfg)
    if not stage.MODEL.ARCH_T:
        stage.MODEL.ARCH_T = stage.MODEL.ARCH_A
    stage.freeze()
    return pass_on_the_command_line(cfg, stage)


def check_tas_archs(cfg: CfgNode) -> None:
    """Refuse stage-2 architectures that cannot be paired (check_archs of the "tas" method)."""
    arch_a, arch_s = cfg.MODEL.ARCH_A, cfg.MODEL.ARCH_S
    if not arch_s:
        raise UserError("MODEL.ARCH_S is empty; name the student's architecture, e.g. MODEL.ARCH_S resnet18")
    if not arch_a:
        raise UserError(f"MODEL.ARCH_A is empty; name the assistant, the student's architecture at DATA.CROP_SIZE "
                        f"(MODEL.ARCH_A {_same_arch_at(arch_s, cfg.DATA.CROP_SIZE)})")
    _check_families(cfg, arch_a, arch_s)
    check_input_size(arch_s, small_crop_size(cfg))
    check_input_size(arch_a, cfg.DATA.CROP_SIZE)
    if is_vit(arch_s) and len(cfg.TAS.VIT_BLOCKS) != len(cfg.TAS.FEAT_WEIGHTS):
        raise UserError(f"TAS.FEAT_WEIGHTS has {len(cfg.TAS.FEAT_WEIGHTS)} weights but TAS.VIT_BLOCKS names "
                        f"{len(cfg.TAS.VIT_BLOCKS)} blocks; give one weight per block (0 switches one off)")
    if not is_vit(arch_s) and len(cfg.TAS.FEAT_WEIGHTS) != CNN_DISTILLED_STAGES:
        raise UserError(f"TAS.FEAT_WEIGHTS has {len(cfg.TAS.FEAT_WEIGHTS)} weights but {arch_s} has "
                        f"{CNN_DISTILLED_STAGES} stages after its input module; give one weight per stage")


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: the distiller
# ---------------------------------------------------------------------------------------------------------------
def build_assistant(cfg: CfgNode) -> nn.Module:
    """The assistant network with MODEL.MODELDICT_A loaded (checked against ARCH_A and NUM_CLASSES)."""
    if not cfg.MODEL.MODELDICT_A:
        raise UserError("MODEL.MODELDICT_A is empty; train the assistant with tools_2_tas/train_assistant_1run.py "
                        "and pass its ckpt/.../model_best.pth (tools_2_tas/train_tas_2stages.py does both)")
    return network_from_checkpoint(cfg, "MODEL.MODELDICT_A", cfg.MODEL.ARCH_A, "assistant checkpoint",
                                   "; train it with tools_2_tas/train_assistant_1run.py (or run "
                                   "tools_2_tas/train_tas_2stages.py)")


def tas_feature_layers(cfg: CfgNode, student: nn.Module) -> list[int]:
    """Indices into the student's feature list that stage 2 distils, one per TAS.FEAT_WEIGHTS entry.

    CNNs: every stage after the input module (1..4). ViTs: the blocks of TAS.VIT_BLOCKS (feature b = block b).
    """
    arch = cfg.MODEL.ARCH_S
    num_feats = len(feature_shapes(student, small_crop_size(cfg)))
    if is_vit(arch):
        depth = num_feats - 1
        outside = [b for b in cfg.TAS.VIT_BLOCKS if not 1 <= b <= depth]
        if outside:
            raise UserError(f"TAS.VIT_BLOCKS {list(cfg.TAS.VIT_BLOCKS)} names block(s) {outside}, but {arch} has "
                            f"blocks 1..{depth}")
        return list(cfg.TAS.VIT_BLOCKS)
    # check_tas_archs has matched TAS.FEAT_WEIGHTS to these (with the ViT's to TAS.VIT_BLOCKS).
    return list(range(1, num_feats))


class TAS(ISRD):
    """Stage 2 of TAS: ISRD's logit KD and L1 reconstruction, plus sum_i w_i MSE(up(f_s^i), f_a^i).

    The frozen assistant (the student's architecture at the large size) is the teacher-side network; each
    distilled student feature is resized to the assistant's spatial size (bilinear by default) before the MSE.
    The ISRD term decodes the student's pre-ReLU feature, as one-stage ISRD does; the feature pairs are taken
    before their ReLU when `pre_relu` (MODEL.PRERELU), else after it (`relu_stages`: the student is a CNN, whose
    stage outputs then need the ReLU that the model would have applied; a ViT has none).
    """

    def __init__(self, student: nn.Module, assistant: nn.Module, temperature: float, alpha: float,
                 decoder: nn.Module, eta: float, position: int, criterion: FKDLoss, layers: Sequence[int],
                 weights: Sequence[float], pre_relu: bool, relu_stages: bool):
        super().__init__(student, assistant, temperature, alpha, decoder, eta, position)
        if len(layers) != len(weights):
            raise ValueError(f"one weight per distilled feature, got {len(layers)} features and {len(weights)} weights")
        self.criterion = criterion
        self.layers = list(layers)
        self.weights = [float(w) for w in weights]
        self.pre_relu = pre_relu
        self.relu_student = relu_stages and not pre_relu

    @property
    def assistant(self) -> nn.Module:
        """The frozen assistant (stored as the base class's teacher)."""
        return self.teacher

    def forward_train(self, image: Tensor, image_large: Tensor, target: Tensor, epoch: int) -> StepOutput:
        """Student logits and the weighted CE, KD, ISRD and feature distillation terms."""
        logits_s, feats_s = self.student(image, return_feat=True, preReLU=True)  # (ISRD's, see the class docstring)
        logits_a, feats_a = self.teacher_forward(image_large, return_feat=True, pre_relu=self.pre_relu)
        # Pairs weighted 0 are skipped, so an ablation costs nothing; loss_fkd stays in the log as 0.
        pairs = [(layer, w) for layer, w in zip(self.layers, self.weights) if w > 0]
        paired_s = [F.relu(feats_s[i]) if self.relu_student else feats_s[i] for i, _ in pairs]
        terms = self.criterion(paired_s, [feats_a[i] for i, _ in pairs])
        loss_fkd = sum((w * term for (_, w), term in zip(pairs, terms)), logits_s.new_zeros(()))
        terms = self.logit_terms(logits_s, logits_a, target)
        terms["loss_isrd"] = self.isrd_term(feats_s, image_large)
        terms["loss_fkd"] = loss_fkd
        return logits_s, terms


def build_tas(cfg: CfgNode, student: nn.Module, assistant: nn.Module) -> TAS:
    """Build the stage-2 distiller around a built student and a loaded assistant.

    Args:
        cfg: the stage-2 config (tas_config); KD, FSR and TAS sections set the terms.
        student: MODEL.ARCH_S, trained on CROP_SIZE / LESSEN_RATIO images.
        assistant: MODEL.ARCH_A with the stage-1 weights, run on CROP_SIZE images.
    Returns:
        A TAS distiller; its learnable parameters are the student's and the ISRD decoder's.
    """
    decoder = build_isrd_decoder(cfg, student)
    layers = tas_feature_layers(cfg, student)
    return TAS(student, assistant, cfg.KD.TEMP, cfg.KD.ALPHA, decoder, cfg.FSR.ETA, cfg.FSR.POSITION,
               FKDLoss(cfg.TAS.FEAT_INTERP), layers, cfg.TAS.FEAT_WEIGHTS, cfg.MODEL.PRERELU,
               relu_stages=not is_vit(cfg.MODEL.ARCH_S))
