"""Run bookkeeping in one place: device, seeds, backends, experiment directory, logging, environment."""

from __future__ import annotations

import os
import platform
import random
import shlex
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import torch
from yacs.config import CfgNode

from lib.config import REPO_ROOT, resolve_path, small_crop_size
from lib.utils.errors import UserError
from lib.utils.log import get_logger


def select_device(cfg: CfgNode, slot: int = 0) -> torch.device:
    """The device of a run: cuda:GPU_ID[slot] when CUDA is there (and wanted), else the CPU with a warning."""
    wanted = cfg.BASIC.DEVICE
    if wanted == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if wanted == "cuda":
            raise UserError("BASIC.DEVICE is 'cuda' but CUDA is not available on this machine; use 'auto' or 'cpu'")
        if cfg.BASIC.GPU_ID:
            get_logger().warning("warning: CUDA is not available; running on the CPU")
        return torch.device("cpu")
    if not cfg.BASIC.GPU_ID:
        return torch.device("cuda", torch.cuda.current_device())
    count = torch.cuda.device_count()
    for gpu in cfg.BASIC.GPU_ID:
        if not 0 <= gpu < count:
            raise UserError(f"BASIC.GPU_ID {list(cfg.BASIC.GPU_ID)} names GPU {gpu}, but this machine has {count} "
                            f"CUDA device(s) (ids 0..{count - 1})")
    return torch.device("cuda", cfg.BASIC.GPU_ID[slot % len(cfg.BASIC.GPU_ID)])


def slot_devices(cfg: CfgNode, device: torch.device, slots: int) -> list[torch.device]:
    """The device of each of `slots` runs trained at once: GPU_ID[slot] on CUDA (select_device), else `device`."""
    if slots > 1 and device.type == "cuda":
        return [select_device(cfg, slot) for slot in range(slots)]
    return [device] * slots


def use_device(device: torch.device) -> None:
    """Make a CUDA `device` the current one, so that streams, events and pinned copies default to it (CPU: no-op)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def configure_backends(cfg: CfgNode) -> None:
    """Apply the CUDNN keys; DETERMINISTIC also asks torch for deterministic algorithms."""
    torch.backends.cudnn.enabled = cfg.CUDNN.ENABLE
    torch.backends.cudnn.benchmark = cfg.CUDNN.BENCHMARK and not cfg.CUDNN.DETERMINISTIC
    torch.backends.cudnn.deterministic = cfg.CUDNN.DETERMINISTIC
    if cfg.CUDNN.DETERMINISTIC:
        # cuBLAS needs this workspace setting for deterministic results (documented by PyTorch).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN (a guard against reading uninitialised memory,
        # which this code never does): one extra fill per allocation, about 8% of a CPU step and an extra kernel
        # launch per allocation on a GPU. Results are the same without it.
        torch.utils.deterministic.fill_uninitialized_memory = False


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def experiment_name(cfg: CfgNode, method: str, num_runs: int) -> str:
    """The experiment folder's name; no timestamps, so the published commands chain.

    Single network (teacher, student baseline): <n>runs_<arch>_<crop>_seed<seed>_<lr>, e.g.
    1runs_resnet50_224_seed0_0.01 (the path the distillation configs name as MODEL.MODELDICT_T).
    Distillation: <n>runs_<method>_<teacher>_<crop>_<student>_<small crop>_seed<seed>_<lr>.
    """
    seed, lr = cfg.BASIC.SEED, _fmt(cfg.SOLVER.START_LR)
    if method == "single":
        return f"{num_runs}runs_{cfg.MODEL.ARCH}_{small_crop_size(cfg)}_seed{seed}_{lr}"
    return (f"{num_runs}runs_{method}_{cfg.MODEL.ARCH_T}_{cfg.DATA.CROP_SIZE}_{cfg.MODEL.ARCH_S}_"
            f"{small_crop_size(cfg)}_seed{seed}_{lr}")


def experiment_dir(cfg: CfgNode, method: str, num_runs: int) -> str:
    """<OUTPUT_ROOT>/<dataset>/<experiment_name>."""
    return os.path.join(resolve_path(cfg.BASIC.OUTPUT_ROOT), cfg.DATA.DATASET, experiment_name(cfg, method, num_runs))


def git_commit() -> str:
    """The repository's git commit (with '-dirty' when modified), or 'unknown'."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_names(devices: Sequence[torch.device]) -> list[str]:
    """The names of `devices`, each once, in order ("cuda:0", "cuda:1"; runs that share a device name it once)."""
    return list(dict.fromkeys(str(device) for device in devices))


def environment_lines(devices: Sequence[torch.device]) -> list[str]:
    """Versions, git commit, command line and the CUDA cards the runs train on (`devices`), for the top of the log."""
    import importlib.metadata

    import torchvision

    # timm's version from its metadata: importing it takes a second that a CNN run does not otherwise spend.
    timm_version = importlib.metadata.version("timm")
    cuda = ", ".join(f"{name} {torch.cuda.get_device_name(torch.device(name))}" for name in device_names(devices)
                     if name.startswith("cuda")) or "none"
    return [
        f"command: {shlex.join([os.path.basename(sys.executable)] + sys.argv)}",  # (quoted: it can be pasted back)
        f"git commit: {git_commit()}",
        f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"timm {timm_version}, numpy {np.__version__}",
        f"cuda device: {cuda}",
    ]
