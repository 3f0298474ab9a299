"""A trained network back from its checkpoint (this project's, the original release's, a bare state dict), with one
clear error for every way the file can fail to fit."""

from __future__ import annotations

import _codecs
import contextlib
import os
import pickle
import re

import numpy as np
import torch
from torch import nn

from lib.utils.errors import UserError, require_file, torch_file_problem
from lib.utils.log import get_logger

from .model_builder import CLASSIFIER_MODULES, build_model, clean_state_dict


def load_network(arch: str, num_classes: int, path: str, what: str, size: int, where: str,
                 hint: str = "") -> tuple[nn.Module, dict]:
    """Build `arch` without pretraining, load every weight from the checkpoint `path`, and warn when it was trained
    at another input size than the `size` px it sees here (the warning names it by `what`'s first word).

    Args:
        arch, num_classes: the network the config asks for.
        path, what, hint: the checkpoint file, how the user names it and what a "not found" error adds (see
            load_weights).
        size, where: the input size it sees here and the keys that set it (named in the warning).
    Returns:
        The network (on the CPU, in training mode) and the loaded checkpoint dict (for its metadata).
    """
    model = build_model(arch, num_classes, False)
    ckpt = load_weights(model, path, what, arch, num_classes, hint)
    trained_size = ckpt.get("input_size")
    if trained_size and trained_size != size:
        get_logger().warning(f"warning: the {what.split()[0]} {path} was trained at {trained_size} px and sees "
                             f"{size} px images here ({where})")
    return model, ckpt


def load_weights(model: nn.Module, path: str, what: str, arch: str, num_classes: int, hint: str = "") -> dict:
    """Load a model_best.pth-style checkpoint into `model`, or raise one clear UserError.

    Args:
        model: the freshly built network.
        path: checkpoint file; a dict with "state_dict" (this project, the original release), a run's last.pth
            (its last epoch's weights under "student"), or a bare state dict. Keys of the original release
            (`module.` prefix, `fc_cls.*`) are converted.
        what: how the user names this file, e.g. "teacher checkpoint MODEL.MODELDICT_T".
        arch: the architecture the config asks for (named in the error message).
        num_classes: the class count the config asks for (named in the error message).
        hint: appended to the "not found" error, e.g. how to make the file.
    Returns:
        The loaded checkpoint dict (for its metadata).
    """
    require_file(path, what, hint)
    problem = torch_file_problem(path)
    if problem:
        raise UserError(f"{what} {path} cannot be loaded: {problem}; give a whole torch checkpoint (a run's "
                        "model_best.pth or last.pth)")
    try:
        ckpt = _load_weights_only(path)
    except pickle.UnpicklingError as err:
        if _WEIGHTS_ONLY_REFUSAL not in str(err):
            raise UserError(f"{what} {path} could not be read (UnpicklingError: {err}); is it a torch checkpoint?"
                            ) from None
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        raise UserError(
            f"{what} {path} holds Python objects beyond tensors and plain values"
            f"{f' ({found.group(1)})' if found else ''}, which unpickling would run as code, so it is not loaded; "
            f"if you trust the file, save its weights alone and pass that file: python -c \"import torch; "
            f"c = torch.load('{path}', weights_only=False); w = c.get('state_dict', c.get('student', c)) if "
            f"isinstance(c, dict) else c.state_dict(); torch.save({{'state_dict': w}}, 'weights.pth')\"") from None
    except PermissionError as err:
        raise UserError(f"{what} {path} cannot be read: {err.strerror or err}; fix its permissions (this user may not "
                        "read it)") from None
    except Exception as err:  # any other unpickling failure is a bad file
        raise UserError(
            f"{what} {path} could not be read ({type(err).__name__}: {err}); is it a torch checkpoint?"
        ) from None
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        state_dict = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("student"), dict):  # last.pth: the last epoch's weights
        state_dict = ckpt["student"]
    elif isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        state_dict, ckpt = ckpt, {}
    else:
        raise UserError(f"{what} {path} holds no state_dict")
    saved_arch = ckpt.get("arch")
    if saved_arch and saved_arch != arch:
        raise UserError(f"{what} {path} was trained as {saved_arch}, but the config asks for {arch}; name "
                        f"{saved_arch} in the config or give a {arch} checkpoint")
    state_dict = clean_state_dict(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise UserError(
            f"{what} {path} does not fit {arch}: {len(missing)} missing and {len(unexpected)} unexpected "
            f"weights (e.g. {example}); it was trained with another architecture"
        )
    for key, value in state_dict.items():
        if tuple(value.shape) != tuple(own[key].shape):
            if (value.ndim >= 1 and own[key].ndim >= 1 and value.shape[0] != own[key].shape[0]
                    and key.rpartition(".")[0] in CLASSIFIER_MODULES):
                raise UserError(
                    f"{what} {path} has {value.shape[0]} classes, but DATA.NUM_CLASSES is {num_classes}"
                )
            raise UserError(
                f"{what} {path} does not fit {arch}: {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(own[key].shape)}"
            )
    model.load_state_dict(state_dict, strict=True)
    return ckpt


def output_root_hint(key: str, path: str, output_root: str, default_root: str) -> str:
    """What a "not found" error for the checkpoint `key` at `path` adds when a command moved its outputs from
    `default_root` to `output_root` (all resolved): the key does not follow BASIC.OUTPUT_ROOT, and the same
    experiment's file under `output_root` if it exists there; "" when the outputs were not moved.

    A checkpoint path written into a config (ckpt/cub/<experiment>/ckpt/model_best.pth) stays where it is when a
    command moves its outputs elsewhere; the teacher trained under the new root is then one key away.
    """
    def under(root: str) -> bool:
        return os.path.commonpath([path, root]) == root

    if under(output_root) or not under(default_root):
        return ""
    parts = os.path.normpath(path).split(os.sep)
    there = os.path.join(output_root, *parts[-4:])  # <dataset>/<experiment>/ckpt/model_best.pth under the root
    if len(parts) > 4 and os.path.isfile(there):
        return f"; {key} does not follow BASIC.OUTPUT_ROOT: did you mean {key} {there}?"
    if os.path.isdir(os.path.dirname(path)):  # its folder is there: the file's name is what is wrong (a typo)
        return ""
    return f"; {key} does not follow BASIC.OUTPUT_ROOT ({output_root}): give the path of the checkpoint to use"


# What torch says when a weights-only load meets an object it will not build.
_WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


def _load_weights_only(path: str) -> object:
    """torch.load that builds tensors and plain values only (no code from the file runs): a checkpoint may come
    from anyone. numpy arrays are allowed too, for a run's last.pth (its numpy RNG state) given as weights."""
    # _codecs.encode: pickle protocol 2 stores an array's bytes through it (torch 2.5+ allows it by itself, 2.4 not).
    numpy_state = [np.ndarray(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32)), _codecs.encode]
    allow = getattr(torch.serialization, "safe_globals", None)  # torch 2.5+: for this load only
    if allow is None:  # torch 2.4: for the process (numpy arrays build no code either)
        torch.serialization.add_safe_globals(numpy_state)
    with allow(numpy_state) if allow else contextlib.nullcontext():
        return torch.load(path, map_location="cpu", weights_only=True)
