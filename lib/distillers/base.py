"""The distiller abstraction: a student, optionally a frozen teacher, and named loss terms."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode

from lib.config import cfg_value, get_cfg, resolve_path
from lib.models.weights import load_network, output_root_hint
from lib.utils.errors import UserError
from lib.utils.files import run_index

# What a training step's forward returns: the student's logits (B, K) and its named, weighted loss terms.
StepOutput = tuple[Tensor, dict[str, Tensor]]
# A training step's forward: (image, image_large, target, epoch) -> StepOutput (Distiller.forward_train, or it
# compiled).
StepFn = Callable[[Tensor, Tensor, Tensor, int], StepOutput]


def check_step_output(output: object) -> StepOutput:
    """`output` if it is what a training step's forward must return, (student logits, {"loss_<term>": a scalar
    tensor}); else a TypeError saying what is wrong (a method being added: docs/extending.md)."""
    what = 'a distiller\'s forward_train must return (student logits, {"loss_<term>": weighted scalar loss})'
    if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], Tensor)
            and isinstance(output[1], dict) and output[1]):
        shape = f"a tuple of {len(output)}" if isinstance(output, tuple) else type(output).__name__
        kinds = f" ({', '.join(type(x).__name__ for x in output)})" if isinstance(output, tuple) else ""
        empty = ": no loss term, nothing to train" if kinds == " (Tensor, dict)" else ""  # (the dict is empty)
        raise TypeError(f"{what}; got {shape}{kinds}{empty}")
    for name, value in output[1].items():
        if not (isinstance(name, str) and name.startswith("loss_")):
            raise TypeError(f"{what}; the term {name!r} is not named loss_<term> (the trainer logs each by its name)")
        if not isinstance(value, Tensor) or value.dim() != 0:
            got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"{what}; the term {name!r} is {got}, not a scalar tensor (reduce it: .mean() or .sum())")
    return output


class Distiller(nn.Module):
    """Owns a student trained on the small image and, optionally, a frozen teacher run on the large one.

    `forward_train` returns the student's logits and a dict of named, already-weighted loss terms; the
    trainer sums and logs them. `get_learnable_parameters` is the one place that decides what the optimiser
    sees. The plain student baseline is this class without a teacher.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True) -> Distiller:
        """Set train/eval mode; the teacher always stays in eval (its BN statistics are frozen)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def set_epoch(self, epoch: int) -> None:
        """Prepare the per-epoch state a compiled step reads from a tensor rather than from its `epoch` argument
        (DKD's warm-up factor); called before each epoch's steps. Nothing for most methods."""

    def get_learnable_parameters(self) -> list[nn.Parameter]:
        """Every parameter the optimiser must update (the student's, plus method-specific modules)."""
        return list(self.student.parameters())

    def extra_modules(self) -> dict[str, nn.Module]:
        """Training-only modules saved beside the student (e.g. the ISRD decoder), by name."""
        return {}

    def forward_test(self, image: Tensor) -> Tensor:
        """Logits of the plain student (what is deployed)."""
        return self.student(image)

    def teacher_forward(self, image_large: Tensor, return_feat: bool = False,
                        pre_relu: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Run the frozen teacher on the large image in inference mode (no autograd bookkeeping at all).

        Its outputs are inference tensors: the losses only ever compute new tensors from them (softmax, attention
        maps, Gram matrices, differences), never save them for backward directly, which autograd would refuse.
        Inside torch.compile (TRAIN.COMPILE) it runs under no_grad instead: AOTAutograd cannot trace a view of a
        parameter taken in inference mode (a ViT teacher's class token expanded to the batch), and a compiled
        graph has no autograd bookkeeping of its own to save.
        """
        with torch.no_grad() if torch.compiler.is_compiling() else torch.inference_mode():
            if return_feat:
                return self.teacher(image_large, return_feat=True, preReLU=pre_relu)
            return self.teacher(image_large)

    def forward(self, image: Tensor, image_large: Tensor, target: Tensor, epoch: int) -> StepOutput:
        """The training step's forward (what DistributedDataParallel calls): see forward_train."""
        return self.forward_train(image, image_large, target, epoch)

    def forward_train(self, image: Tensor, image_large: Tensor, target: Tensor, epoch: int) -> StepOutput:
        """Return (student logits, {"loss_<term>": weighted loss}); `epoch` counts from 1."""
        logits = self.student(image)
        return logits, {"loss_ce": F.cross_entropy(logits, target)}


# The student baseline: the same machinery without a teacher.
Vanilla = Distiller


def network_from_checkpoint(cfg: CfgNode, key: str, arch: str, what: str, hint: str = "") -> nn.Module:
    """The frozen-to-be network `arch` with every weight from the checkpoint that config key `key` names (the
    teacher's MODEL.MODELDICT_T, the assistant's MODEL.MODELDICT_A), checked against DATA.NUM_CLASSES; a warning
    when it was trained at another size than DATA.CROP_SIZE. No ImageNet initialisation first.

    Args:
        cfg: the frozen config.
        key: the MODEL.* key holding the path (set: the callers refuse it empty, each with its own advice).
        arch: the architecture it must hold.
        what: how errors name it ("teacher checkpoint").
        hint: what a "not found" error adds, after the note on BASIC.OUTPUT_ROOT when the outputs were moved.
    """
    path = resolve_path(cfg_value(cfg, key))
    moved = output_root_hint(key, path, resolve_path(cfg.BASIC.OUTPUT_ROOT), resolve_path(get_cfg().BASIC.OUTPUT_ROOT))
    network, _ = load_network(arch, cfg.DATA.NUM_CLASSES, path, f"{what} {key}", cfg.DATA.CROP_SIZE,
                              "DATA.CROP_SIZE", hint=moved + hint)
    unfinished = unfinished_run(path)
    if unfinished:
        raise UserError(f"{what} {key} {path} comes from a run that has not finished ({unfinished} holds no "
                        "result.json): it is the best of the epochs trained so far; finish that run (re-run its "
                        "command), then this one")
    return network


def unfinished_run(path: str) -> str | None:
    """The run folder of a checkpoint <experiment>/ckpt[/run<i>]/model_best.pth (this project's layout) whose run
    has not finished, or is training now: a run writes its result.json as it ends. Else None (another layout, a
    finished run, a last.pth given on purpose)."""
    folder = os.path.dirname(path)
    if os.path.basename(path) != "model_best.pth":
        return None
    ckpt = folder if os.path.basename(folder) == "ckpt" else os.path.dirname(folder)
    if os.path.basename(ckpt) != "ckpt" or (ckpt != folder and run_index(os.path.basename(folder)) is None):
        return None
    if not os.path.isfile(os.path.join(os.path.dirname(ckpt), "config.yaml")):
        return None
    return None if os.path.isfile(os.path.join(folder, "result.json")) else folder
