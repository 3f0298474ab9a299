"""Shared fixtures: tiny generated datasets in the official layouts, tiny configs, and script runners."""

from __future__ import annotations

import dataclasses
import faulthandler
import multiprocessing.util
import os
import pathlib
import runpy
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from lib.config import REPO_ROOT

# One CPU thread for the tests' tiny networks, in process and in the scripts run_script starts: on a 2-core machine
# with anything else running, two threads made a step anywhere from as fast to 60 times slower.
torch.set_num_threads(1)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


def _stop_signal_state() -> dict[str, object]:
    """How Ctrl-C, SIGTERM, SIGHUP and SIGUSR1 are handled in this process: the handlers Python records and, on
    Linux, what the kernel has for this (the main) thread: caught, ignored or blocked (a library's C code may change
    those)."""
    state: dict[str, object] = {f"python {s.name}": signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        with open("/proc/self/status") as f:
            masks = dict(line.split(":\t", 1) for line in f if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
    except OSError:
        return state
    for field, mask in masks.items():
        for s in STOP_SIGNALS:
            state[f"kernel {field} {s.name}"] = bool(int(mask, 16) >> (s - 1) & 1)
    return state


@pytest.fixture(autouse=True)
def no_interrupts_left_held():
    """Every test leaves the signal-holding blocks it entered (a leaked one would hold later tests' signals), and
    Ctrl-C and SIGTERM handled as it found them (one left ignored would make a later test's Ctrl-C do nothing)."""
    from lib.utils import errors

    before = _stop_signal_state()
    yield
    held = dict(errors._hold, received=list(errors._hold["received"]))
    errors.forget_held_interrupts()
    assert (held["depth"], held["received"]) == (0, []), f"interrupts_held blocks left open: {held}"
    after = _stop_signal_state()
    changed = {key: (before[key], after.get(key)) for key in before if after.get(key) != before[key]}
    assert not changed, f"the test changed how stop signals are handled (before, after): {changed}"


# A test still running after this many seconds (PD_TEST_TIMEOUT_S overrides) has hung, most likely waiting for a
# process or a lock: every thread's traceback is printed and the suite ends with status 1, rather than at CI's
# 90-minute limit with nothing said. The slowest tests take about a minute on 2 busy cores.
TEST_TIMEOUT_S = float(os.environ.get("PD_TEST_TIMEOUT_S", 600))
_terminal: list = []  # the terminal's stderr, kept open for the tracebacks (a test's own stderr is captured)


def pytest_configure(config):
    # Called while pytest does not capture (it does while this file is imported): file descriptor 2 is the terminal.
    _terminal.append(os.fdopen(os.dup(2), "w"))
    # This process's multiprocessing folder, made now in the usual place and removed as it exits: loader workers
    # forked by the tests in this process use it rather than each make its own, which one killed leaves in /tmp.
    multiprocessing.util.get_temp_dir()


def pytest_unconfigure(config):
    for terminal in _terminal:
        terminal.close()
    _terminal.clear()


@pytest.fixture(autouse=True)
def hung_test_ends_the_suite():
    faulthandler.dump_traceback_later(TEST_TIMEOUT_S, exit=True, file=_terminal[0])
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def subprocesses_keep_their_temporary_folders_in_the_tests_own(tmp_path_factory, monkeypatch):
    """The processes a test starts make their temporary folders in one of the test's own, removed after it: torchrun
    left a /tmp/torchelastic_* folder per job, and processes the tests kill with -9 their /tmp/pymp-* folders, a few
    more in /tmp with every run of the suite. (This process's own temporary folder is chosen once, before the tests.)
    """
    folder = tmp_path_factory.mktemp("tmpdir")
    monkeypatch.setenv("TMPDIR", str(folder))
    yield
    shutil.rmtree(folder, ignore_errors=True)


# Tiny but real: teacher at 64 px, student at 32 px (LESSEN_RATIO 2), 4 classes, a few images each.
TINY = {
    "BASIC": {"SEED": 0, "GPU_ID": [0], "NUM_WORKERS": 0, "DISP_FREQ": 1, "NUM_RUNS": 2},
    "DATA": {"DATASET": "cub", "NUM_CLASSES": 4, "RESIZE_SIZE": 72, "CROP_SIZE": 64, "LESSEN_RATIO": 1.0},
    "TRAIN": {"BATCH_SIZE": 8},
    "TEST": {"BATCH_SIZE": 16},
    "SOLVER": {"START_LR": 0.01, "LR_STEPS": [1], "NUM_EPOCHS": 2, "WEIGHT_DECAY": 0.0005, "MUMENTUM": 0.9},
}


def _merge(base: dict, extra: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict):
            out[key] = _merge(out.get(key, {}), value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="session")
def tiny_cub(tmp_path_factory) -> str:
    """A CUB-layout dataset: 4 classes, 4 train + 4 test images each, 48x40 JPEGs (some grayscale)."""
    from lib.datasets.synthetic import make_cub

    root = str(tmp_path_factory.mktemp("data") / "cub")
    make_cub(root, num_classes=4, per_class=4, image_size=(48, 40), seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_aircraft(tmp_path_factory) -> str:
    """An FGVC-Aircraft-layout dataset: 4 variants (names with spaces and slashes), 4 + 4 images each."""
    from lib.datasets.synthetic import make_aircraft

    root = str(tmp_path_factory.mktemp("data") / "fgvc-aircraft-2013b")
    make_aircraft(root, num_classes=4, per_class=4, image_size=(48, 40), seed=0)
    return root


@dataclasses.dataclass
class TeacherRun:
    """The published teacher command run once on tiny_cub: its process, experiment folder and best checkpoint."""

    proc: subprocess.CompletedProcess
    exp: pathlib.Path
    checkpoint: str


@pytest.fixture(scope="session")
def tiny_teacher(tiny_cub, tmp_path_factory) -> TeacherRun:
    """A resnet18@64 teacher trained by the teacher script as users run it (TINY: 2 epochs, LR_STEPS [1]).

    Every test that needs a trained teacher, or a look at what a CNN run's process did, shares this one process
    start (seconds of imports each). It runs with PYTHONPROFILEIMPORTTIME, so its stderr lists every module the
    process imported.
    """
    root = tmp_path_factory.mktemp("teacher")
    cfg = _merge(TINY, {"MODEL": {"ARCH": "resnet18"}})
    cfg["DATA"]["DATADIR"], cfg["BASIC"]["OUTPUT_ROOT"] = tiny_cub, str(root)
    path = root / "teacher.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_script("tools_0_base/train_teacher_1run.py", str(path), "BASIC.SEED", "0", "BASIC.GPU_ID", "[0]",
                      env={"PYTHONPROFILEIMPORTTIME": "1"})
    exp = root / "cub" / "1runs_resnet18_64_seed0_0.01"
    return TeacherRun(proc, exp, str(exp / "ckpt" / "model_best.pth"))


@pytest.fixture
def write_config(tmp_path):
    """Write a tiny YAML config (TINY merged with `extra`) into tmp_path and return its path."""
    counter = {"n": 0}

    def write(extra: dict, datadir: str, output_root: str | None = None) -> str:
        counter["n"] += 1
        cfg = _merge(TINY, extra)
        cfg["DATA"]["DATADIR"] = datadir
        cfg["BASIC"]["OUTPUT_ROOT"] = output_root or str(tmp_path / "ckpt")
        path = tmp_path / f"config{counter['n']}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    return write


def run_script(script: str, config: str, *opts: str, check: bool = True, timeout: int = 600, env: dict | None = None):
    """Run a training script as a subprocess (the way users run it); returns the CompletedProcess.

    `env` adds variables to the environment the script gets.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), "--config_file", config, *opts],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_cli(script: str, *args: str, monkeypatch) -> int:
    """Run a script (path relative to the repository root, or absolute) in this process; returns its exit status."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    try:
        runpy.run_path(os.path.join(REPO_ROOT, script), run_name="__main__")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def run_in_process(script: str, config: str, *opts: str, monkeypatch) -> int:
    """Run a training script's main() in this process (fast, for error cases); returns its exit status."""
    return run_cli(script, "--config_file", config, *opts, monkeypatch=monkeypatch)


# torch.cuda.OutOfMemoryError's message as torch 2.x words it (one long line).
OOM_MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
               "1.06 GiB is free. Including non-PyTorch memory, this process has 78.12 GiB memory in use. Of the "
               "allocated memory 75.50 GiB is allocated by PyTorch, and 1.20 GiB is reserved by PyTorch but "
               "unallocated. If reserved but unallocated memory is large try setting "
               "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")


def one_error_line(err: str) -> str:
    """The single `error: ...` line a user mistake must produce (asserts there is exactly one, no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def save_network(path, network: str, num_classes: int = 4, seed: int = 0, **extra) -> str:
    """A model_best.pth-like checkpoint of a randomly initialised architecture `network` (seeded; no training
    needed) at `path`, with `extra` keys beside its state dict (e.g. arch=...); returns the path as a string."""
    import torch

    from lib.models.model_builder import build_model

    torch.manual_seed(seed)
    model = build_model(network, num_classes, False)
    torch.save({"epoch": 1, "state_dict": model.state_dict(), "best_acc": 0.0, **extra}, path)
    return str(path)
