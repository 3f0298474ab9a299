"""Two-stage pixel distillation (TAS) as the scripts run it: stage 1, stage 2, or both in order.

The stages' configs and the stage-2 distiller are lib.distillers.tas; each stage is one run_experiment.
"""

from __future__ import annotations

import os

from yacs.config import CfgNode

from lib.config import resolve_path, small_crop_size
from lib.distillers import check_archs
from lib.distillers.methods import build_isrd_decoder
from lib.distillers.tas import assistant_checkpoint, assistant_config, tas_config, tas_feature_layers
from lib.models.model_builder import build_model
from lib.models.weights import load_weights
from lib.utils.errors import UserError
from lib.utils.log import get_logger

from .resume import check_saved_config, check_saved_inputs
from .trainer import run_experiment

__all__ = ["train_assistant", "train_tas", "train_two_stages"]


def train_assistant(cfg: CfgNode) -> dict:
    """Stage 1: one seeded run of teacher -> assistant at DATA.CROP_SIZE; returns its results.json content."""
    stage = assistant_config(cfg)
    return run_experiment(stage, stage.MODEL.KDTYPE, num_runs=1, multi_run=False)


def train_tas(cfg: CfgNode) -> dict:
    """Stage 2: BASIC.NUM_RUNS seeded runs of assistant -> student; returns the results.json content.

    An assistant that stage 1 of this config is still writing (or was interrupted writing) is refused: its
    model_best.pth is that of an epoch before the last. Without a teacher (MODEL.ARCH_T empty), MODEL.MODELDICT_A
    names the assistant, and there is no stage 1 of this config.
    """
    stage = tas_config(cfg)
    ckpt = assistant_checkpoint(cfg) if cfg.MODEL.ARCH_T else None
    unfinished = ckpt and resolve_path(stage.MODEL.MODELDICT_A) == resolve_path(ckpt) and _unfinished_stage1(ckpt)
    if unfinished:
        raise UserError(f"the assistant {ckpt} comes from a stage 1 that has not finished ({unfinished} holds "
                        "no results.json); finish it with tools_2_tas/train_assistant_1run.py (or run "
                        "tools_2_tas/train_tas_2stages.py, which does both stages)")
    return run_experiment(stage, "tas", num_runs=stage.BASIC.NUM_RUNS, multi_run=True)


def _stage1_folder(ckpt: str) -> str:
    """The experiment folder of stage 1's assistant checkpoint <folder>/ckpt/model_best.pth."""
    return os.path.dirname(os.path.dirname(resolve_path(ckpt)))


def _unfinished_stage1(ckpt: str) -> str | None:
    """The experiment folder of stage 1's assistant checkpoint when that stage has not finished (a config but no
    results.json), else None."""
    exp_dir = _stage1_folder(ckpt)
    unfinished = os.path.isfile(os.path.join(exp_dir, "config.yaml")) and not os.path.isfile(
        os.path.join(exp_dir, "results.json"))
    return exp_dir if unfinished else None


def train_two_stages(cfg: CfgNode) -> dict:
    """Both stages in order; stage 1 is skipped when its assistant checkpoint exists, is not mid-run and was trained
    with this command's stage 1 config and teacher (BASIC.FRESH_START True trains it again).

    Everything stage 2 needs from the config is checked before stage 1 starts. MODEL.MODELDICT_A must be empty
    or name stage 1's output (to distil from another assistant, run train_tas_5runs.py).
    """
    log = get_logger()
    stage1, stage2 = assistant_config(cfg), tas_config(cfg)
    ckpt = assistant_checkpoint(cfg)
    if resolve_path(stage2.MODEL.MODELDICT_A) != resolve_path(ckpt):
        raise UserError(f"MODEL.MODELDICT_A is {cfg.MODEL.MODELDICT_A}, but stage 1 writes the assistant to {ckpt}; "
                        "leave MODEL.MODELDICT_A '' here, or run tools_2_tas/train_tas_5runs.py to use another one")
    # The registry's checks of both stages, before any training.
    check_archs(stage1, stage1.MODEL.KDTYPE)
    check_archs(stage2, "tas")
    # The student, its files read as stage 2 reads them: a mistyped path found now, not after stage 1 has trained.
    # (ImageNet weights through the weight APIs are fetched by stage 2 itself.)
    from_file = bool(stage2.MODEL.PRETRAIN_S and stage2.MODEL.PRETRAIN_FILE_S)
    student = build_model(stage2.MODEL.ARCH_S, stage2.DATA.NUM_CLASSES, from_file,
                          resolve_path(stage2.MODEL.PRETRAIN_FILE_S) if from_file else "")
    tas_feature_layers(stage2, student)
    build_isrd_decoder(stage2, student)  # FSR.POSITION in range (stage 1 reads no FSR key)
    if stage2.MODEL.MODELDICT_S:
        load_weights(student, resolve_path(stage2.MODEL.MODELDICT_S), "student checkpoint MODEL.MODELDICT_S",
                     stage2.MODEL.ARCH_S, stage2.DATA.NUM_CLASSES)

    if os.path.isfile(resolve_path(ckpt)) and not _unfinished_stage1(ckpt) and not cfg.BASIC.FRESH_START:
        # Stage 1's folder name holds its networks, sizes, seed and learning rate, not its teacher file or epochs:
        # an assistant of another stage 1 config would be distilled from unawares.
        exp_dir = _stage1_folder(ckpt)
        check_saved_config(stage1, exp_dir)
        check_saved_inputs(stage1, stage1.MODEL.KDTYPE, exp_dir)
        log.info(f"stage 1 skipped: the assistant checkpoint {ckpt} exists")
    else:  # BASIC.FRESH_START True starts both stages over (stage 1's old folder is moved aside)
        log.info(f"stage 1: {stage1.MODEL.ARCH_T}@{stage1.DATA.CROP_SIZE} -> assistant "
                 f"{stage1.MODEL.ARCH_S}@{stage1.DATA.CROP_SIZE} ({stage1.MODEL.KDTYPE})")
        train_assistant(cfg)
    log.info(f"stage 2: assistant {stage2.MODEL.ARCH_A}@{stage2.DATA.CROP_SIZE} -> student "
             f"{stage2.MODEL.ARCH_S}@{small_crop_size(stage2)} (tas, {stage2.BASIC.NUM_RUNS} runs)")
    return train_tas(cfg)
