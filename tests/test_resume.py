"""Exact resume after SIGKILL, non-finite losses, and a full disk."""

import errno
import io
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from lib.analysis.summary import find_experiments
from lib.config import REPO_ROOT
from lib.distillers.base import Distiller, Vanilla
from lib.distillers.methods import ISRD
from lib.engine import checkpoint
from lib.utils import files
from lib.utils.errors import (
    FRESH_START_INTERRUPTED_MESSAGE,
    INTERRUPTED_MESSAGE,
    Terminated,
    UserError,
    raise_terminated,
)

from .conftest import run_in_process, run_script

STUDENT = "tools_0_base/train_student_5runs.py"

# Kill points, in order: each is a line prefix of the script's output (DISP_FREQ 1 prints every step); the
# process is killed with SIGKILL the moment that line appears. Then the command is re-run to the end. Run 0 is
# killed mid-epoch with its loader workers busy (it resumes from epoch 2's checkpoint into epoch 3, where
# LR_STEPS [2] has decayed the learning rate), then right after its last epoch's checkpoint (before the run's
# result is written); run 1 starts afresh and is killed mid-epoch, to resume from its own first checkpoint.
# Each kill is a process start (seconds of imports); the other pipelines share everything a kill exercises but
# their loaders, whose resumed streams test_engine.py checks in-process.
KILL_AT = ["run 0 epoch 3 [1/", "run 0 epoch 3/3", "run 1 epoch 2 [1/"]


def _kill_when(config: str, marker: str) -> bool:
    """Start the script, SIGKILL it as soon as `marker` is printed; False if it finished first."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, STUDENT), "--config_file", config],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.startswith(marker):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
        proc.wait()
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_run_killed_at_several_moments_resumes_to_exactly_the_uninterrupted_result(tiny_cub, write_config,
                                                                                    tmp_path, monkeypatch):
    extra = {"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 3, "LR_STEPS": [2]},
             "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}, "CUDNN": {"DETERMINISTIC": True},
             "BASIC": {"NUM_WORKERS": 2}}
    reference = write_config(extra, tiny_cub, output_root=str(tmp_path / "reference"))
    assert run_in_process(STUDENT, reference, "BASIC.DEVICE", "cpu", monkeypatch=monkeypatch) == 0
    interrupted = write_config(extra, tiny_cub, output_root=str(tmp_path / "interrupted"))
    for marker in KILL_AT:
        assert _kill_when(interrupted, marker), f"the run finished before '{marker}'"
    run_script(STUDENT, interrupted)

    exp = os.path.join("cub", "2runs_resnet18_32_seed0_0.01")
    expected = json.loads((tmp_path / "reference" / exp / "results.json").read_text())
    got = json.loads((tmp_path / "interrupted" / exp / "results.json").read_text())
    assert got == expected
    for run in (0, 1):
        # Every epoch's losses, accuracies and learning rate, bit for bit (LR_STEPS [2]: the resumed scheduler
        # must decay before epoch 3), and the final weights.
        histories = [[{k: v for k, v in json.loads(line).items() if k != "time_s"}
                      for line in (tmp_path / root / exp / "log" / f"run{run}" / "stats.jsonl").read_text()
                      .splitlines()]
                     for root in ("reference", "interrupted")]
        assert [s["epoch"] for s in histories[1]] == [1, 2, 3]
        assert [s["lr"] for s in histories[1]] == pytest.approx([0.01, 0.01, 0.001])
        assert histories[1] == histories[0], f"run {run}"
        weights = [torch.load(tmp_path / root / exp / "ckpt" / f"run{run}" / "last.pth", weights_only=False)["student"]
                   for root in ("reference", "interrupted")]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), f"run {run}"


def test_a_non_finite_loss_stops_the_run_naming_where_and_keeps_the_last_good_checkpoint(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    original = Distiller.forward_train

    def poisoned(self, image, image_large, target, epoch):
        logits, losses = original(self, image, image_large, target, epoch)
        if epoch == 2:
            losses["loss_ce"] = losses["loss_ce"] * float("nan")
        return logits, losses

    monkeypatch.setattr(Distiller, "forward_train", poisoned)
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 3},
                           "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the loss is not finite in run 0, epoch 2, step 1 (loss_ce=nan")
    exp = tmp_path / "ckpt" / "cub" / "2runs_resnet18_32_seed0_0.01"
    assert torch.load(exp / "ckpt" / "run0" / "last.pth", weights_only=False)["epoch"] == 1
    # train.log ends with the same line, so the folder tells a failed experiment from a running one.
    assert (exp / "train.log").read_text().splitlines()[-1].split(" ", 2)[2] == err
    notes = []
    assert find_experiments(str(tmp_path / "ckpt"), warn=notes.append) == []
    assert notes == [f"note: {exp} stopped with an error (0 runs done): {err[len('error: '):]}; it is not in the table"]


def test_a_non_finite_test_loss_stops_the_run_before_that_epoch_can_count_as_the_best(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    train, test = Distiller.forward_train, Distiller.forward_test
    trained = {"epoch": 0}

    def counting(self, image, image_large, target, epoch):
        trained["epoch"] = epoch
        return train(self, image, image_large, target, epoch)

    def diverged(self, image):  # from epoch 2 on the student's logits are NaN at test time only
        logits = test(self, image)
        return logits * float("nan") if trained["epoch"] >= 2 else logits

    monkeypatch.setattr(Distiller, "forward_train", counting)
    monkeypatch.setattr(Distiller, "forward_test", diverged)
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 3}, "BASIC": {"NUM_RUNS": 1},
                           "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 2
    assert capsys.readouterr().err.startswith("error: the test loss is not finite in run 0, epoch 2 (test_loss=nan")
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_32_seed0_0.01"
    assert torch.load(exp / "ckpt" / "run0" / "model_best.pth", weights_only=False)["epoch"] == 1
    stats = (exp / "log" / "run0" / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in stats] == [1]


class _FaultyFile:
    """A file whose write() first calls `before_write(data)`, which may raise as the OS or a signal handler would."""

    def __init__(self, f, before_write):
        self.f, self.before_write = f, before_write

    def write(self, data) -> int:
        self.before_write(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _FullDisk(f, room: int) -> _FaultyFile:  # noqa: N802 (made like a class)
    """A file whose device fills after `room` bytes: write raises ENOSPC, as the OS does."""
    left = [room]

    def fill(data) -> None:
        size = memoryview(data).nbytes
        if size > left[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        left[0] -= size

    return _FaultyFile(f, fill)


def test_out_of_disk_space_while_saving_is_one_error_and_the_previous_checkpoint_survives(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    checkpoint.save_checkpoint({"epoch": 1}, path)
    # The real torch.save into a file on a device that fills part-way (its zip writer turns the OSError into a
    # RuntimeError when it writes into the file itself).
    fdopen = os.fdopen
    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: _FullDisk(fdopen(fd, mode), room=1000))
    with pytest.raises(UserError, match="no space left on the device while writing .*last.pth"):
        checkpoint.save_checkpoint({"epoch": 2, "weights": torch.zeros(10_000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["last.pth"], "the temporary file was left behind"


def test_a_full_disk_as_an_experiment_starts_leaves_no_empty_config_yaml_and_the_same_command_then_trains(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    # config.yaml was opened and then written: a full disk left it empty, and the next command took the folder for
    # an attempt with another config and moved it aside.
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}, "BASIC": {"NUM_RUNS": 1}},
                          tiny_cub)
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01"
    fdopen = os.fdopen

    def full_for_config_yaml(fd, mode):
        room = 0 if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".config.yaml.") else 1 << 30
        return _FullDisk(fdopen(fd, mode), room)

    monkeypatch.setattr(checkpoint.os, "fdopen", full_for_config_yaml)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 2
    assert f"no space left on the device while writing {exp / 'config.yaml'}" in capsys.readouterr().err
    assert not (exp / "config.yaml").exists()
    monkeypatch.setattr(checkpoint.os, "fdopen", fdopen)  # space freed
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert "was moved to" not in capsys.readouterr().err
    assert sorted(os.listdir(exp.parent)) == [exp.name] and (exp / "results.json").is_file()


def test_a_sigterm_while_a_checkpoint_is_written_stops_the_run_and_the_previous_checkpoint_survives(tmp_path,
                                                                                                  monkeypatch):
    # torch.save calls the file's write() from C++, and a Terminated raised there by the signal handler came back
    # as a RuntimeError, which the full-disk fallback took for a failed write: the SIGTERM was lost and training
    # went on (about one kill in five on a small model, whose epochs are mostly saving).
    path = str(tmp_path / "last.pth")
    checkpoint.save_checkpoint({"epoch": 1}, path)
    fdopen, sent = os.fdopen, []  # the sizes written

    def signalled(data) -> None:
        sent.append(len(data))
        if len(sent) == 3:  # the SIGTERM handler, run in here (where Python happened to check for signals) as the
            raise_terminated(signal.SIGTERM, None)  # C++ writer writes a record

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: _FaultyFile(fdopen(fd, mode), signalled))
    with pytest.raises(Terminated):
        checkpoint.save_checkpoint({"epoch": 2, "weights": torch.zeros(10_000)}, path)
    monkeypatch.undo()
    assert len(sent) == 3 and torch.load(path, weights_only=False) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["last.pth"], "the temporary file was left behind"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_saved_files_are_readable_by_others_as_the_umask_allows(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        checkpoint.save_checkpoint({"epoch": 1}, str(tmp_path / "last.pth"))
        checkpoint.save_json({"runs": []}, str(tmp_path / "results.json"))
    finally:
        os.umask(old)
    for name in ("last.pth", "results.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux's /proc tells the umask")
def test_the_umask_is_read_without_setting_it(monkeypatch):
    # Setting it to 0 to read it back left a moment in which a file another thread made (tensorboard's writer, a
    # log) got no mask.
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(checkpoint.os, "umask", lambda mask: pytest.fail("the umask was set"))
        assert checkpoint._umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(old)


def _student_killed_at_a_last_pth(tiny_cub, write_config, monkeypatch, epoch: int, saved: bool) -> str:
    """The config of a 1-run, 2-epoch student whose first attempt was interrupted (exit 130) at epoch `epoch`'s
    last.pth: right after writing it (`saved`) or right before. save_checkpoint is real again on return."""
    from lib.engine import trainer

    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 2}, "BASIC": {"NUM_RUNS": 1},
                           "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}}, tiny_cub)
    real_save = trainer.save_checkpoint

    def save_and_die(obj, path):
        at_the_moment = path.endswith("last.pth") and obj["epoch"] == epoch
        if at_the_moment and not saved:
            raise KeyboardInterrupt
        real_save(obj, path)
        if at_the_moment:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_and_die)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 130
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    return config


def test_a_kill_right_after_the_last_epochs_checkpoint_loses_no_epoch_of_the_logs(tiny_cub, write_config, tmp_path,
                                                                                  monkeypatch):
    # The process is killed the moment the final epoch's last.pth is on disk.
    config = _student_killed_at_a_last_pth(tiny_cub, write_config, monkeypatch, epoch=2, saved=True)
    notes = []
    find_experiments(str(tmp_path / "ckpt"), warn=notes.append)
    assert notes == [f"note: {tmp_path / 'ckpt' / 'cub' / '1runs_resnet18_32_seed0_0.01'} was interrupted (0 runs "
                     "done); re-run its command to resume; it is not in the table"]
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    stats = tmp_path / "ckpt" / "cub" / "1runs_resnet18_32_seed0_0.01" / "log" / "run0" / "stats.jsonl"
    assert [json.loads(line)["epoch"] for line in stats.read_text().splitlines()] == [1, 2]


def test_an_attempt_killed_before_its_first_last_pth_leaves_no_duplicate_tensorboard_steps(tiny_cub, write_config,
                                                                                           tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Epoch 1's logs are written, its last.pth is not.
    config = _student_killed_at_a_last_pth(tiny_cub, write_config, monkeypatch, epoch=1, saved=False)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    events = EventAccumulator(str(tmp_path / "ckpt" / "cub" / "1runs_resnet18_32_seed0_0.01" / "log" / "run0"))
    events.Reload()
    for tag in ("test/top1", "train/loss", "lr"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2], tag


def test_a_resumed_run_whose_model_best_pth_is_gone_or_damaged_says_so(tiny_cub, write_config, tmp_path, monkeypatch,
                                                                        capsys):
    config = _student_killed_at_a_last_pth(tiny_cub, write_config, monkeypatch, epoch=1, saved=True)
    ckpt = tmp_path / "ckpt" / "cub" / "1runs_resnet18_32_seed0_0.01" / "ckpt" / "run0"
    (ckpt / "model_best.pth").unlink()
    capsys.readouterr()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert (f"warning: {ckpt / 'model_best.pth'} (run 0's best epoch so far) is missing; it is written again only "
            f"if a later epoch scores higher; delete {ckpt} to train run 0 again") in capsys.readouterr().out
    # A finished run (its result.json written) cannot make it again: results.json is rebuilt, with the warning.
    (ckpt / "model_best.pth").unlink(missing_ok=True)
    (ckpt.parent.parent / "results.json").unlink()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert (f"warning: {ckpt / 'model_best.pth'} (run 0's best epoch so far) is missing; it cannot be made again; "
            f"delete {ckpt} to train run 0 again") in capsys.readouterr().out
    # Cut short (a copy that ran out of room): found now, not when distillation or tools/eval.py loads it.
    (ckpt / "model_best.pth").write_bytes(b"PK\x03\x04" + bytes(1000))
    (ckpt.parent.parent / "results.json").unlink()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert f"warning: {ckpt / 'model_best.pth'} cannot be read (" in out, out
    assert f"), it is damaged; it cannot be made again; delete {ckpt} to train run 0 again" in out, out


def test_a_run_whose_last_pth_was_deleted_after_a_later_epoch_says_it_trains_again_from_its_first(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    # Killed between epoch 1's model_best.pth and its last.pth: nothing was lost, nothing is said.
    config = _student_killed_at_a_last_pth(tiny_cub, write_config, monkeypatch, epoch=1, saved=False)
    ckpt = tmp_path / "ckpt" / "cub" / "1runs_resnet18_32_seed0_0.01" / "ckpt" / "run0"
    assert (ckpt / "model_best.pth").is_file() and not (ckpt / "last.pth").exists()
    capsys.readouterr()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert "is missing" not in capsys.readouterr().out
    # A model_best.pth of epoch 2 without a last.pth: one was written, then deleted (a clean-up by hand, say).
    for name in ("result.json", "last.pth"):
        (ckpt / name).unlink()
    (ckpt.parent.parent / "results.json").unlink()
    best = torch.load(ckpt / "model_best.pth", weights_only=False)
    torch.save({**best, "epoch": 2}, ckpt / "model_best.pth")
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert (f"warning: {ckpt / 'last.pth'} is missing, though run 0 saved epoch 2 (its model_best.pth): run 0 trains "
            "again from its first epoch") in out, out
    assert "run 0 epoch 1/2" in out


def test_a_resumed_cpu_experiment_goes_on_with_the_thread_count_its_runs_started_with(tiny_cub, write_config, tmp_path,
                                                                                      monkeypatch, capsys):
    # A CPU kernel's rounding depends on its thread count, which OMP_NUM_THREADS or a scheduler's cpuset may change
    # between one job and the next: the resumed runs would not end as an uninterrupted experiment's.
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}, "BASIC": {"NUM_RUNS": 2},
                           "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "2runs_resnet18_32_seed0_0.01"
    own = torch.get_num_threads()
    run0, run1 = (exp / "ckpt" / f"run{run}" / "result.json" for run in (0, 1))
    assert json.loads(run0.read_text())["cpu_threads"] == own
    assert torch.load(exp / "ckpt" / "run1" / "last.pth", weights_only=False)["cpu_threads"] == own
    saved = own + 1  # run 0 was trained by a job given one more CPU
    run0.write_text(json.dumps({**json.loads(run0.read_text()), "cpu_threads": saved}))
    state = torch.load(exp / "ckpt" / "run1" / "last.pth", weights_only=False)
    torch.save({**state, "cpu_threads": saved}, exp / "ckpt" / "run1" / "last.pth")
    run1.unlink()
    (exp / "results.json").unlink()
    capsys.readouterr()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert (f"warning: the saved runs of this experiment trained with {saved} CPU threads each, and this command "
            f"would use {own}; it uses {saved}, so that the resumed runs' numbers are those of an uninterrupted "
            "experiment") in capsys.readouterr().out
    assert json.loads(run1.read_text())["cpu_threads"] == saved
    assert torch.get_num_threads() == own  # put back when the command ends


def test_a_resumed_run_counts_its_best_epoch_from_the_first_epoch_not_from_the_resume(tiny_cub, write_config, tmp_path,
                                                                                      monkeypatch):
    from lib.engine import trainer

    config = _student_killed_at_a_last_pth(tiny_cub, write_config, monkeypatch, epoch=1, saved=True)
    monkeypatch.setattr(trainer, "test_epoch", lambda *args: {"test_top1": 100.0, "test_top5": 100.0, "test_loss": 0.1})
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0  # epoch 2 of 2, the best
    results = tmp_path / "ckpt" / "cub" / "1runs_resnet18_32_seed0_0.01" / "results.json"
    (run,) = json.loads(results.read_text())["runs"]
    assert (run["best_acc"], run["best_epoch"], run["last_acc"]) == (100.0, 2, 100.0)


@pytest.mark.parametrize("fresh_start", [False, True])
def test_sigterm_mid_run_unwinds_like_ctrl_c_with_exit_143_and_the_command_resumes(fresh_start, tiny_cub, write_config,
                                                                                   tmp_path, monkeypatch, capsys):
    # A scheduler preempting the job, or `kill <pid>`: the run stops at once, keeps its last saved epoch, stops
    # its loader workers, and prints the Ctrl-C line; the same command then finishes the run.
    original = Distiller.forward_train

    def preempted(self, image, image_large, target, epoch):
        if epoch == 2:
            assert signal.getsignal(signal.SIGTERM) is raise_terminated  # else SIGTERM would end the test runner
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, image, image_large, target, epoch)

    monkeypatch.setattr(Distiller, "forward_train", preempted)
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 2}, "BASIC": {"NUM_RUNS": 1},
                           "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}}, tiny_cub)
    fresh = ["BASIC.FRESH_START", "True"] if fresh_start else []
    assert run_in_process(STUDENT, config, *fresh, monkeypatch=monkeypatch) == 143
    # The same command with BASIC.FRESH_START True would start over: the line says to drop it.
    expected = FRESH_START_INTERRUPTED_MESSAGE if fresh_start else INTERRUPTED_MESSAGE
    assert capsys.readouterr().err.splitlines() == [expected]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the script's handler is gone with it
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_32_seed0_0.01"
    assert torch.load(exp / "ckpt" / "run0" / "last.pth", weights_only=False)["epoch"] == 1
    # train.log and summarize say the same (train.log said "re-run the same command" after FRESH_START too).
    without = " without BASIC.FRESH_START True" if fresh_start else ""
    assert (exp / "train.log").read_text().splitlines()[-1].endswith(
        f" stopped: interrupted; re-run the same command{without} to resume")
    notes = []
    find_experiments(str(tmp_path / "ckpt"), warn=notes.append)
    assert notes == [f"note: {exp} was interrupted (0 runs done); re-run its command{without} to resume; it is not "
                     "in the table"]
    monkeypatch.setattr(Distiller, "forward_train", original)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert json.loads((exp / "ckpt" / "run0" / "result.json").read_text())["run"] == 0


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGUSR1, 138)])
def test_a_stop_signal_to_the_whole_process_group_is_one_line_and_its_exit_status(signum, status, tiny_cub,
                                                                                  write_config, tmp_path):
    # `timeout`, Slurm's preemption and systemd signal every process of the job, loader workers included: a worker
    # that died of it made the main process print torch's worker traceback, or exit 1 with it. A closed terminal
    # (an ssh session dropped) sends SIGHUP to the whole foreground group: the same, with 129, and train.log says so;
    # and Slurm's SIGUSR1 ahead of a time limit (`--signal=USR1@120`, default action: die without a word), with 138.
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 50}, "BASIC": {"NUM_RUNS": 1,
                           "NUM_WORKERS": 2, "DISP_FREQ": 1}, "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}}, tiny_cub)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    # The signal's default action, as a shell without nohup gives it: a suite started under nohup (or by a runner
    # that ignores SIGHUP) passed its ignore on, and the script rightly kept it and trained to the end.
    proc = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, STUDENT), "--config_file", config],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))
    try:
        for line in proc.stdout:
            if line.startswith("run 0 epoch 2 [1/"):  # the workers are busy with the next batches
                os.killpg(proc.pid, signum)
                break
        _, err = _wait_or_dump(proc, 120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == status, err
    assert err.splitlines() == [INTERRUPTED_MESSAGE]
    log = (tmp_path / "ckpt" / "cub" / "1runs_resnet18_32_seed0_0.01" / "train.log").read_text().splitlines()
    assert log[-1].endswith(" stopped: interrupted; re-run the same command to resume"), log[-1]
    deadline = time.time() + 10  # and the workers, which ignore SIGTERM, are gone with the main process
    while _group_alive(proc.pid):
        assert time.time() < deadline, "loader workers outlived the main process"
        time.sleep(0.1)


def test_an_interrupted_run_has_stopped_its_loader_workers_by_the_time_it_says_so(tiny_cub, write_config,
                                                                                  monkeypatch, capsys):
    # The traceback keeps train_epoch's frame, and in it the training stream: deleting the stream alone left its
    # workers running until the process exited.
    import multiprocessing

    from lib.utils import errors

    def daemonic_children() -> set[int]:
        return {child.pid for child in multiprocessing.active_children() if child.daemon}

    earlier = daemonic_children()  # other tests' loaders, not yet collected
    workers = []
    say_and_exit = errors._exit

    def exit_(line, status, every_rank=False):
        workers.append(sorted(daemonic_children() - earlier))
        say_and_exit(line, status, every_rank)

    monkeypatch.setattr(errors, "_exit", exit_)
    monkeypatch.setattr(Vanilla, "forward_train", sigterm_at_epoch_2(Vanilla.forward_train))
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "BASIC": {"NUM_RUNS": 1, "NUM_WORKERS": 2},
                           "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 143
    assert capsys.readouterr().err.splitlines() == [INTERRUPTED_MESSAGE]
    assert workers == [[]]


# Run a script with its DataLoader taking a worker's index queue lock, getting a SIGTERM, and letting go, at the
# 12th index it hands out (epoch 1): where CPython may raise a handler's exception for real.
_SIGTERM_UNDER_THE_QUEUE_LOCK = """
import runpy, signal, sys, threading
from torch.utils.data import dataloader

put_index = dataloader._MultiProcessingDataLoaderIter._try_put_index
calls = [0]

def put_index_signalled_under_the_lock(self):
    calls[0] += 1
    if calls[0] == 12:
        lock = self._index_queues[0]._notempty
        lock.acquire()
        print("SIGTERM under the queue lock", flush=True)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        lock.release()
    return put_index(self)

dataloader._MultiProcessingDataLoaderIter._try_put_index = put_index_signalled_under_the_lock
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_sigterm_while_the_loader_holds_its_queue_lock_still_exits_143(tiny_cub, write_config, tmp_path):
    # Raised there, the exception left the lock taken, and the loader's shutdown at exit waited on it for ever:
    # the job printed "interrupted" and hung until killed (seen once in CI, from a whole-group SIGTERM).
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 3}, "BASIC": {"NUM_RUNS": 1,
                           "NUM_WORKERS": 2}, "TRAIN": {"BATCH_SIZE": 2},
                           "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}}, tiny_cub)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    proc = subprocess.Popen([sys.executable, "-c", _SIGTERM_UNDER_THE_QUEUE_LOCK, os.path.join(REPO_ROOT, STUDENT),
                             "--config_file", config], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    out, err = _wait_or_dump(proc, 120)
    assert "SIGTERM under the queue lock" in out
    assert proc.returncode == 143, err
    assert err.splitlines() == [INTERRUPTED_MESSAGE]


def _wait_or_dump(proc: subprocess.Popen, timeout: int) -> tuple[str, str]:
    """proc's (stdout, stderr) once it ends; fails with every thread's stack (faulthandler, on SIGABRT) if it is
    still running after `timeout` s."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGABRT)
        pytest.fail(f"still running {timeout} s after SIGTERM:\n{proc.communicate(timeout=30)[1]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def sigterm_at_epoch_2(forward_train):
    """A distiller's forward_train that SIGTERMs this process at the first step of epoch 2 (a preempted job), epoch 1
    saved; otherwise `forward_train`."""

    def preempted(self, image, image_large, target, epoch):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward_train(self, image, image_large, target, epoch)

    return preempted


def reference_and_resumed(extra: dict, forward_train, tiny_cub, write_config, tmp_path, monkeypatch) -> list:
    """Train one run of a 2-epoch ResNet-18 baseline (with `extra`) and the distiller's `forward_train` twice: through,
    and SIGTERMed at epoch 2 then resumed; returns both experiment folders (reference, resumed)."""
    extra = {"MODEL": {"ARCH": "resnet18"}, "BASIC": {"NUM_RUNS": 1}, "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32},
             **extra}
    monkeypatch.setattr(Vanilla, "forward_train", forward_train)
    reference = write_config(extra, tiny_cub, output_root=str(tmp_path / "reference"))
    assert run_in_process(STUDENT, reference, monkeypatch=monkeypatch) == 0
    interrupted = write_config(extra, tiny_cub, output_root=str(tmp_path / "interrupted"))
    monkeypatch.setattr(Vanilla, "forward_train", sigterm_at_epoch_2(forward_train))
    assert run_in_process(STUDENT, interrupted, monkeypatch=monkeypatch) == 143
    monkeypatch.setattr(Vanilla, "forward_train", forward_train)
    assert run_in_process(STUDENT, interrupted, monkeypatch=monkeypatch) == 0
    exp = os.path.join("cub", "1runs_resnet18_32_seed0_0.01")
    return [tmp_path / root / exp for root in ("reference", "interrupted")]


def test_a_resumed_run_draws_the_same_random_numbers_as_an_uninterrupted_one(tiny_cub, write_config, tmp_path,
                                                                             monkeypatch):
    # Dropout or drop-path would draw from torch's global RNG inside the step, a Mixup (timm's draws np.random.beta)
    # or a library from numpy's or Python's: last.pth brings all three states back.
    original = Vanilla.forward_train

    def noisy(self, image, image_large, target, epoch):
        logits, losses = original(self, image, image_large, target, epoch)
        noise = (1 + torch.rand(())) * (1 + np.random.rand()) * (1 + random.random())
        return logits, {name: loss * noise for name, loss in losses.items()}

    folders = reference_and_resumed({}, noisy, tiny_cub, write_config, tmp_path, monkeypatch)
    stats = [[{k: v for k, v in json.loads(line).items() if k != "time_s"}
              for line in (exp / "log" / "run0" / "stats.jsonl").read_text().splitlines()] for exp in folders]
    assert [s["epoch"] for s in stats[1]] == [1, 2] and stats[1] == stats[0]


@pytest.mark.parametrize("locked", [True, False])
def test_a_resume_removes_the_temporary_file_of_a_write_killed_with_sigkill(locked, tiny_cub, write_config, tmp_path,
                                                                          monkeypatch, capsys):
    # kill -9 between atomic_write's temporary file and its rename leaves that file (a whole last.pth) behind.
    # Without a lock (a file system without flock) another command may be writing it now: it stays.
    original = Vanilla.forward_train
    preempted = sigterm_at_epoch_2(original)
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "BASIC": {"NUM_RUNS": 1},
                           "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}}, tiny_cub)
    monkeypatch.setattr(Vanilla, "forward_train", preempted)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 143
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_32_seed0_0.01"
    left = exp / "ckpt" / "run0" / ".last.pth.k9x_2abq.tmp"
    left.write_bytes((exp / "ckpt" / "run0" / "last.pth").read_bytes())
    eval_dir = exp / "ckpt" / "run0" / "eval" / "last_16px"  # tools/eval.py's, which takes no lock: maybe writing
    eval_dir.mkdir(parents=True)
    kept = [exp / "notes.tmp", exp / ".notes.tmp",  # not names atomic_write makes: the user's
            eval_dir / ".metrics.json.a1b2c3d4.tmp"]
    for path in kept:
        path.write_text("mine")
    monkeypatch.setattr(Vanilla, "forward_train", original)
    if not locked:
        monkeypatch.setattr(files, "fcntl", None)
    capsys.readouterr()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert left.exists() != locked and all(path.read_text() == "mine" for path in kept)
    said = f"removed {left}, a file that a killed write left half-done" in capsys.readouterr().out
    assert said == locked


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler")  # every step of epoch 1 overflowed
def test_a_resumed_fp16_run_carries_on_its_loss_scale(tiny_cub, write_config, tmp_path, monkeypatch):
    # Under TRAIN.AMP fp16 the grad scaler's scale and growth count are part of the run: started afresh at resume,
    # the scale would grow and back off at other steps than the uninterrupted run's, skipping other steps.
    folders = reference_and_resumed({"TRAIN": {"AMP": "fp16"}}, Vanilla.forward_train, tiny_cub, write_config,
                                    tmp_path, monkeypatch)
    scalers = [torch.load(exp / "ckpt" / "run0" / "last.pth", weights_only=False)["scaler"] for exp in folders]
    assert scalers[0]["scale"] < 2.0**16  # fp16 overflowed at the initial scale: the scaler backed off
    assert scalers[1] == scalers[0]


def test_an_isrd_run_resumes_its_decoder_with_the_student(tiny_teacher, tiny_cub, write_config, tmp_path, monkeypatch):
    # The kill test above trains a plain student; ISRD's decoder is an extra module its last.pth must bring back.
    extra = {"MODEL": {"ARCH_T": "resnet18", "ARCH_S": "resnet18", "MODELDICT_T": tiny_teacher.checkpoint},
             "DATA": {"LESSEN_RATIO": 2.0}, "FSR": {"ETA": 10.0}, "BASIC": {"NUM_RUNS": 1}}
    isrd = "tools_1_ts/train_isrd_5runs.py"
    reference = write_config(extra, tiny_cub, output_root=str(tmp_path / "reference"))
    assert run_in_process(isrd, reference, monkeypatch=monkeypatch) == 0
    original = ISRD.forward_train

    preempted = sigterm_at_epoch_2(original)
    interrupted = write_config(extra, tiny_cub, output_root=str(tmp_path / "interrupted"))
    monkeypatch.setattr(ISRD, "forward_train", preempted)
    assert run_in_process(isrd, interrupted, monkeypatch=monkeypatch) == 143
    monkeypatch.setattr(ISRD, "forward_train", original)
    assert run_in_process(isrd, interrupted, monkeypatch=monkeypatch) == 0
    exp = os.path.join("cub", "1runs_isrd_resnet18_64_resnet18_32_seed0_0.01")
    states = [torch.load(tmp_path / root / exp / "ckpt" / "run0" / "last.pth", weights_only=False)
              for root in ("reference", "interrupted")]
    assert states[1]["epoch"] == 2
    for part in ("student", "decoder"):
        saved = [state["student"] if part == "student" else state["extra"]["decoder"] for state in states]
        assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0]), part


def test_a_runs_cuda_rng_state_is_its_own_devices_and_comes_back_on_whatever_device_resumes_it(monkeypatch):
    saved, restored = {}, []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved.setdefault(str(device), torch.tensor([7])))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state.item(), str(device))))
    state = checkpoint.rng_state(torch.device("cuda", 3))
    assert list(saved) == ["cuda:3"] and state["cuda"].item() == 7
    assert "cuda" not in checkpoint.rng_state(torch.device("cpu"))
    checkpoint.set_rng_state(state, torch.device("cuda", 0))  # resumed in another slot, or with fewer GPUs visible
    # A last.pth written before: one state per visible GPU (get_rng_state_all); a GPU beyond the list is skipped.
    old = dict(state, cuda=[torch.tensor([1]), torch.tensor([2])])
    checkpoint.set_rng_state(old, torch.device("cuda", 1))
    checkpoint.set_rng_state(old, torch.device("cuda", 5))
    assert restored == [(7, "cuda:0"), (2, "cuda:1")]


# --------------------------------------------------------------- the checks of an earlier attempt (lib.engine.resume)
def test_moving_aside_takes_the_first_free_old_number(tmp_path):
    from lib.engine.resume import move_aside

    exp = tmp_path / "5runs_x"
    for name in ("5runs_x", "5runs_x.old1", "5runs_x.old2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mark").write_text(name)
    assert move_aside(str(exp)) == f"{exp}.old3"
    assert (tmp_path / "5runs_x.old2" / "mark").read_text() == "5runs_x.old2"  # untouched
    assert (tmp_path / "5runs_x.old3" / "mark").read_text() == "5runs_x" and not exp.exists()


def test_a_path_key_set_where_the_saved_config_left_it_empty_is_another_config(tmp_path):
    from lib.config import get_cfg
    from lib.engine.resume import check_saved_config

    (tmp_path / "config.yaml").write_text(get_cfg().dump())  # MODEL.MODELDICT_S ''
    cfg = get_cfg()
    check_saved_config(cfg, str(tmp_path))
    cfg.MODEL.MODELDICT_S = str(tmp_path / "init.pth")
    with pytest.raises(UserError, match="another config: MODEL.MODELDICT_S"):
        check_saved_config(cfg, str(tmp_path))


def test_inputs_json_entries_an_older_version_did_not_write_are_not_checked(tmp_path):
    from types import SimpleNamespace

    from lib.config import get_cfg
    from lib.engine.resume import check_saved_data, check_saved_inputs

    teacher = tmp_path / "teacher.pth"
    teacher.write_bytes(b"weights")
    cfg = get_cfg()
    cfg.MODEL.ARCH_T, cfg.MODEL.ARCH_S, cfg.MODEL.MODELDICT_T = "resnet18", "resnet18", str(teacher)
    (tmp_path / "inputs.json").write_text(json.dumps({"DATA.DATADIR": {"train": {"images": 3}}}))
    check_saved_inputs(cfg, "kd", str(tmp_path))  # no teacher entry
    split = SimpleNamespace(root="data", split="train", cache_size=None, fingerprint={"images": 4, "sha256": "ab"})
    check_saved_data(cfg, str(tmp_path), split, split)  # a split entry without its SHA-256


def test_every_checkpoint_a_config_names_is_recorded_so_that_a_copy_of_one_it_does_not_read_is_recognised(tmp_path):
    # TAS stage 2 reads its assistant, not the teacher; train_tas_2stages.py passes it the teacher's path all the
    # same. With the teacher copied to a node's own disk, stage 1 took the copy and stage 2 refused it.
    from lib.config import get_cfg
    from lib.engine.resume import check_saved_config, checkpoint_fingerprints

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "teacher.pth").write_bytes(b"teacher")
    (tmp_path / "assistant.pth").write_bytes(b"assistant")
    cfg = get_cfg()
    cfg.MODEL.MODELDICT_T, cfg.MODEL.MODELDICT_A = str(tmp_path / "a" / "teacher.pth"), str(tmp_path / "assistant.pth")
    assert list(checkpoint_fingerprints(cfg, "tas")) == ["MODEL.MODELDICT_A"]  # what the resume check compares
    recorded = checkpoint_fingerprints(cfg, "tas", every_key=True)
    assert set(recorded) == {"MODEL.MODELDICT_T", "MODEL.MODELDICT_A"}
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(cfg.dump())
    (exp / "inputs.json").write_text(json.dumps(recorded))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "teacher.pth").write_bytes(b"teacher")
    moved = cfg.clone()
    moved.MODEL.MODELDICT_T = str(tmp_path / "b" / "teacher.pth")
    check_saved_config(moved, str(exp))
    (tmp_path / "b" / "teacher.pth").write_bytes(b"another teacher")
    with pytest.raises(UserError, match=r"MODEL.MODELDICT_T \('.*' -> '.*', which holds other weights\)"):
        check_saved_config(moved, str(exp))
    # An experiment that recorded only what its method reads (an older one) cannot tell: another config.
    (exp / "inputs.json").write_text(json.dumps(checkpoint_fingerprints(cfg, "tas")))
    (tmp_path / "b" / "teacher.pth").write_bytes(b"teacher")
    with pytest.raises(UserError, match=r"MODEL.MODELDICT_T \('.*' -> '.*'\)\. Re-run"):
        check_saved_config(moved, str(exp))


def test_saved_results_must_hold_numbers_and_runs(tmp_path):
    run = tmp_path / "result.json"
    run.write_text(json.dumps({"run": 0, "seed": 0, "best_acc": True, "best_epoch": 1, "last_acc": 1.0}))
    with pytest.raises(ValueError, match="result.json lacks a number in best_acc"):  # a bool is no accuracy
        checkpoint.load_run_result(str(run))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": [], "best_acc_mean": 1.0, "best_acc_std": 0.0, "last_acc_mean": 1.0,
                                   "last_acc_std": 0.0}))
    with pytest.raises(ValueError, match="results.json lacks its list of runs"):
        checkpoint.load_results(str(results))


def test_no_lock_holder_is_named_for_a_folder_that_is_gone(tmp_path):
    assert checkpoint.lock_holder(str(tmp_path / "gone")) == ""


@pytest.mark.parametrize("saved_fused, own_fused", [(None, True), (True, None)])
def test_a_resumed_optimiser_keeps_its_own_step_kernel_and_steps_on_unscaled_gradients(saved_fused, own_fused):
    # A GPU run steps with the fused SGD kernel, which the fp16 grad scaler lets unscale the gradients; resuming a
    # last.pth saved by another kernel (an older version, or the run moved between a GPU and the CPU) must not take
    # the saved kernel with the state: the step would see scaled gradients.
    from lib.engine.trainer import load_optimizer_state

    def sgd(fused):
        weight = torch.nn.Parameter(torch.ones(3))
        return weight, torch.optim.SGD([weight], lr=0.1, momentum=0.9, fused=fused)

    saved_weight, saved = sgd(saved_fused)
    saved_weight.grad = torch.ones(3)
    saved.step()  # a momentum buffer to carry over
    weight, optimizer = sgd(own_fused)
    load_optimizer_state(optimizer, saved.state_dict())
    assert optimizer.param_groups[0]["fused"] is own_fused
    assert torch.equal(optimizer.state[weight]["momentum_buffer"], torch.ones(3))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(weight.sum()).backward()
    scaler.step(optimizer)
    assert torch.allclose(weight.detach(), torch.full((3,), 1 - 0.1 * (0.9 * 1 + 1)))  # gradient 1, not 1024


def test_the_runs_another_run_count_finished_are_named_only_up_to_this_experiments_count(tmp_path):
    # 5 runs finished, then BASIC.NUM_RUNS 3: runs 3 and 4 are not trained again, and the note must not say they are.
    from lib.config import get_cfg
    from lib.engine.resume import runs_elsewhere

    cfg = get_cfg()
    other = tmp_path / "5runs_resnet18_32_seed0_0.01"
    other.mkdir()
    (other / "config.yaml").write_text(cfg.dump())
    for run in range(5):
        (other / "ckpt" / f"run{run}").mkdir(parents=True)
        (other / "ckpt" / f"run{run}" / "result.json").write_text("{}")
    assert runs_elsewhere(cfg, str(tmp_path / "3runs_resnet18_32_seed0_0.01"), 3) == [(str(other), [0, 1, 2])]


def test_an_atomic_write_fsyncs_the_file_and_then_its_folder_and_renames_within_the_folder(tmp_path, monkeypatch):
    calls = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        st = os.fstat(fd)
        calls.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file"))
        fsync(fd)

    def spy_replace(src, dst):
        calls.append(("replace", os.path.dirname(os.path.abspath(src)) == os.path.dirname(os.path.abspath(dst))))
        replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "fsync", spy_fsync)
    monkeypatch.setattr(checkpoint.os, "replace", spy_replace)
    checkpoint.save_json({"a": 1}, str(tmp_path / "results.json"))
    # data on disk before the rename; the rename on disk before returning; the rename never crosses file systems
    assert calls == [("fsync", "file"), ("replace", True), ("fsync", "dir")]


def test_a_write_that_fails_with_a_non_os_error_leaves_no_temporary_file_and_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    checkpoint.save_json({"old": True}, str(path))
    with pytest.raises(TypeError):
        checkpoint.save_json({"bad": object()}, str(path))  # not JSON-serialisable, raised inside write_fn
    assert os.listdir(tmp_path) == ["results.json"]
    assert checkpoint.load_json(str(path)) == {"old": True}


def test_a_checkpoint_rewritten_after_a_failed_streamed_save_has_no_tail_of_the_first_attempt(tmp_path, monkeypatch):
    real_save = torch.save
    attempts = []

    def save(obj, f, *args, **kwargs):
        attempts.append(1)
        if len(attempts) == 1:  # the streamed attempt writes a lot, then fails as torch's zip writer does
            f.write(b"\0" * 1_000_000)
            raise RuntimeError("PytorchStreamWriter failed writing file")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    path = tmp_path / "last.pth"
    checkpoint.save_checkpoint({"epoch": 3}, str(path))
    monkeypatch.undo()
    buffer = io.BytesIO()
    torch.save({"epoch": 3}, buffer)
    assert path.read_bytes() == buffer.getvalue()
