"""Build the distiller of a method from the config: single (no teacher), kd, at, sp, ickd, dkd, isrd, tas."""

from __future__ import annotations

from torch import nn
from yacs.config import CfgNode

from lib.config import KDTYPES, cfg_value, get_cfg, given_on_the_command_line, resolve_path, small_crop_size
from lib.losses import ATLoss, DKDLoss, ICKDLoss, SPLoss
from lib.models.model_builder import build_model, check_input_size, feature_shapes
from lib.models.weights import load_weights
from lib.utils.errors import UserError
from lib.utils.log import get_logger

from .base import Distiller, Vanilla, network_from_checkpoint
from .methods import DKD, ISRD, KD, FeatureKD, build_isrd_decoder
from .tas import TAS, build_assistant, build_tas, check_tas_archs

__all__ = ["Distiller", "Vanilla", "KD", "DKD", "FeatureKD", "ISRD", "TAS", "build_distiller", "build_teacher",
           "build_assistant", "check_archs", "METHODS", "method_archs", "method_checkpoints"]

# "tas" is stage 2 of two-stage distillation (lib/distillers/tas.py): its teacher-side network is the assistant.
METHODS = ("single", *KDTYPES, "isrd", "tas")


def method_archs(cfg: CfgNode, method: str) -> tuple[str | None, str]:
    """(teacher arch or None, student arch) of a method; for "tas" the teacher side is the assistant."""
    if method == "single":
        return None, cfg.MODEL.ARCH
    if method == "tas":
        return cfg.MODEL.ARCH_A, cfg.MODEL.ARCH_S
    return cfg.MODEL.ARCH_T, cfg.MODEL.ARCH_S


def method_checkpoints(cfg: CfgNode, method: str) -> dict[str, str]:
    """The checkpoints a method starts from: {config key: resolved path} (teacher or assistant, student init)."""
    keys = [] if method == "single" else ["MODEL.MODELDICT_A" if method == "tas" else "MODEL.MODELDICT_T",
                                          "MODEL.MODELDICT_S"]
    paths = {key: cfg.MODEL.get(key.split(".")[1]) for key in keys}
    return {key: resolve_path(path) for key, path in paths.items() if path}


def check_archs(cfg: CfgNode, method: str) -> None:
    """Refuse impossible architecture / input-size combinations before anything is built or written."""
    if method == "tas":
        check_tas_archs(cfg)
        return
    arch_t, arch_s = method_archs(cfg, method)
    if not arch_s:
        key = "MODEL.ARCH" if method == "single" else "MODEL.ARCH_S"
        raise UserError(f"{key} is empty; name an architecture, e.g. {key} resnet18")
    if method != "single" and not arch_t:
        raise UserError("MODEL.ARCH_T is empty; name the teacher's architecture, e.g. MODEL.ARCH_T resnet50")
    if method == "isrd" and cfg.FSR.ETA <= 0:
        raise UserError(f"FSR.ETA is {cfg.FSR.ETA:g}, so ISRD would train plain KD in a folder named isrd; set FSR.ETA "
                        "(the release: 50 for CUB at 56 px, 10 at 112 px, 20 for Aircraft at 56 px), or train KD with "
                        "tools_1_ts/train_kd_5runs.py")
    check_input_size(arch_s, small_crop_size(cfg))
    if arch_t:
        check_input_size(arch_t, cfg.DATA.CROP_SIZE)


def build_teacher(cfg: CfgNode) -> nn.Module:
    """The teacher network with MODEL.MODELDICT_T loaded (checked against ARCH_T and NUM_CLASSES)."""
    if not cfg.MODEL.MODELDICT_T:
        raise UserError("MODEL.MODELDICT_T is empty; train a teacher with tools_0_base/train_teacher_1run.py "
                        "and pass its ckpt/.../model_best.pth")
    # Every weight comes from the checkpoint (MODEL.PRETRAIN_T is unused).
    return network_from_checkpoint(cfg, "MODEL.MODELDICT_T", cfg.MODEL.ARCH_T, "teacher checkpoint")


def _weights_file(path: str) -> str:
    return resolve_path(path) if path else ""


# The model keys a script of the other kind reads: set, they would be ignored without a word (MODEL.PRETRAIN False
# given to a distillation script for a from-scratch ablation trained its PRETRAIN_S student all the same).
_BASELINE_IGNORES = ("MODEL.ARCH_T", "MODEL.MODELDICT_T", "MODEL.ARCH_A", "MODEL.MODELDICT_A", "MODEL.PRETRAIN_A",
                     "MODEL.ARCH_S", "MODEL.MODELDICT_S", "MODEL.PRETRAIN_S", "MODEL.PRETRAIN_FILE_S")
_DISTILLATION_IGNORES = ("MODEL.ARCH", "MODEL.PRETRAIN", "MODEL.PRETRAIN_FILE")


def _warn_of_ignored_model_keys(cfg: CfgNode, method: str) -> None:
    """A warning for each model key that `method`'s script does not read, set away from its default or on the
    command line (MODEL.PRETRAIN False there is an intent too)."""
    defaults, given = get_cfg(), given_on_the_command_line(cfg)
    if method == "single":
        keys = _BASELINE_IGNORES
        reads = ("a teacher or student baseline trains MODEL.ARCH from MODEL.PRETRAIN(_FILE); the distillation "
                 "scripts read the _T, _A and _S keys")
    else:
        keys = _DISTILLATION_IGNORES
        reads = ("distillation trains the student MODEL.ARCH_S from MODEL.PRETRAIN_S (PRETRAIN_FILE_S, "
                 "MODELDICT_S); the teacher and student baselines read MODEL.ARCH and MODEL.PRETRAIN(_FILE)")
    for key in keys:
        value = cfg_value(cfg, key)
        if value != cfg_value(defaults, key) or key in given:
            get_logger().warning(f"warning: {key} {value} is ignored: {reads}")


def _build_student(cfg: CfgNode, method: str) -> nn.Module:
    _warn_of_ignored_model_keys(cfg, method)
    if method == "single":
        return build_model(cfg.MODEL.ARCH, cfg.DATA.NUM_CLASSES, cfg.MODEL.PRETRAIN,
                           _weights_file(cfg.MODEL.PRETRAIN_FILE))
    student = build_model(cfg.MODEL.ARCH_S, cfg.DATA.NUM_CLASSES, cfg.MODEL.PRETRAIN_S,
                          _weights_file(cfg.MODEL.PRETRAIN_FILE_S))
    if cfg.MODEL.MODELDICT_S:
        load_weights(student, resolve_path(cfg.MODEL.MODELDICT_S), "student checkpoint MODEL.MODELDICT_S",
                     cfg.MODEL.ARCH_S, cfg.DATA.NUM_CLASSES)
    return student


def build_distiller(cfg: CfgNode, method: str, teacher: nn.Module | None = None) -> Distiller:
    """Build the student (and teacher, losses, decoder) of `method` on the CPU.

    Args:
        cfg: the frozen config.
        method: one of METHODS; "single" trains MODEL.ARCH alone (teacher and student baselines); "tas" is
            stage 2 of two-stage distillation, the frozen assistant (MODEL.MODELDICT_A) in the teacher's place.
        teacher: a ready teacher network (the benchmark's random-weight stand-in); default: build_teacher(cfg),
            or build_assistant(cfg) for "tas".
    Returns:
        A Distiller whose get_learnable_parameters() lists everything the optimiser must update.
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    check_archs(cfg, method)
    if method == "single":
        return Vanilla(_build_student(cfg, method))
    if method == "tas":
        assistant = teacher if teacher is not None else build_assistant(cfg)
        return build_tas(cfg, _build_student(cfg, method), assistant)
    teacher = teacher if teacher is not None else build_teacher(cfg)
    student = _build_student(cfg, method)
    small = small_crop_size(cfg)
    if method == "kd":
        return KD(student, teacher, cfg.KD.TEMP, cfg.KD.ALPHA)
    if method == "dkd":
        dkd = cfg.DKD
        return DKD(student, teacher, DKDLoss(dkd.ALPHA, dkd.BETA, dkd.TEMP, dkd.WARMUP, dkd.RELEASE_WARMUP))
    if method == "isrd":
        decoder = build_isrd_decoder(cfg, student)
        return ISRD(student, teacher, cfg.KD.TEMP, cfg.KD.ALPHA, decoder, cfg.FSR.ETA, cfg.FSR.POSITION)
    # Feature methods: AT pairs the features after the input module, SP and ICKD the last feature.
    shapes_s = feature_shapes(student, small)
    shapes_t = feature_shapes(teacher, cfg.DATA.CROP_SIZE)
    if method == "at":
        # The release zips feats_s[1:] with feats_t[1:]: between CNNs the four stages; a ViT student's first four
        # blocks against a CNN teacher's four stages (the larger map average-pooled to the smaller).
        paired = slice(1, min(len(shapes_s), len(shapes_t)))
        return FeatureKD(student, teacher, ATLoss(), "at", cfg.AT.BETA, paired, cfg.MODEL.PRERELU)
    if method == "sp":
        return FeatureKD(student, teacher, SPLoss(), "sp", cfg.SP.BETA, slice(-1, None), cfg.MODEL.PRERELU)
    if method == "ickd":
        criterion = ICKDLoss(shapes_s[-1][0], shapes_t[-1][0], cfg.ICKD.TRAIN_EMBED)
        return FeatureKD(student, teacher, criterion, "ickd", cfg.ICKD.BETA, slice(-1, None), cfg.MODEL.PRERELU)
    # A method added to lib.config.KDTYPES without its branch here (docs/extending.md) must not train another's loss.
    raise NotImplementedError(f"MODEL.KDTYPE {method!r} is in lib.config.KDTYPES, but build_distiller "
                              "(lib/distillers/__init__.py) has no branch that builds it; add one (docs/extending.md)")
