"""Every mistake a user can make gets one clear line, exit status 2, and nothing written (README's table)."""

import errno
import glob
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from lib.config import REPO_ROOT
from lib.models.model_builder import build_model
from lib.utils import errors
from lib.utils.errors import (
    TOOL_INTERRUPTED_MESSAGE,
    ArgumentParser,
    HungUp,
    Signalled,
    Terminated,
    UserError,
    cli_main,
    interrupts_held,
    raise_interrupted,
    raise_terminated,
    signal_safe_iter,
)

from .conftest import OOM_MESSAGE, one_error_line, run_cli, run_in_process

KD_SCRIPT = "tools_1_ts/train_kd_5runs.py"
ISRD_SCRIPT = "tools_1_ts/train_isrd_5runs.py"
TEACHER = "tools_0_base/train_teacher_1run.py"


@pytest.fixture
def broken_cub(tiny_cub, tmp_path):
    """A private copy of the tiny CUB dataset that a test may break."""
    root = tmp_path / "cub_copy"
    shutil.copytree(tiny_cub, root)
    return root


def _first_image(root):
    line = (root / "images.txt").read_text().splitlines()[0]
    return root / "images" / line.split(" ", 1)[1]


def _teacher(tmp_path, arch="resnet18", classes=4, record_arch=False):
    """A teacher checkpoint: the original release's dict, or (record_arch) this project's, which names its arch."""
    path = tmp_path / f"teacher_{arch}_{classes}.pth"
    ckpt = {"epoch": 1, "state_dict": build_model(arch, classes, False).state_dict(), "best_acc": 0.0}
    torch.save({**ckpt, "arch": arch} if record_arch else ckpt, path)
    return str(path)


# (case id, how to break things) -> (script, extra config, overrides, expected words in the one line)
def _case(name, tmp_path, broken_cub, tiny_cub):
    teacher = {"MODEL": {"ARCH_T": "resnet18", "ARCH_S": "resnet18"}, "DATA": {"LESSEN_RATIO": 2.0}}
    if name == "unknown key":
        return TEACHER, {"MODEL": {"ARCH": "resnet18"}}, ["SOLVER.LR", "0.1"], ["SOLVER.LR"], tiny_cub
    if name == "wrong type":
        return TEACHER, {"MODEL": {"ARCH": "resnet18"}}, ["SOLVER.NUM_EPOCHS", "'ten'"], ["SOLVER.NUM_EPOCHS"], tiny_cub
    if name == "unknown arch":
        return TEACHER, {"MODEL": {"ARCH": "resnet19"}}, [], ["resnet19"], tiny_cub
    if name == "unknown kdtype":
        return KD_SCRIPT, teacher, ["MODEL.KDTYPE", "fitnet"], ["MODEL.KDTYPE", "fitnet"], tiny_cub
    if name == "unknown dataset":
        return TEACHER, {"MODEL": {"ARCH": "resnet18"}}, ["DATA.DATASET", "imagenet"], ["DATA.DATASET"], tiny_cub
    if name == "missing dataset folder":
        return TEACHER, {"MODEL": {"ARCH": "resnet18"}}, [], ["nowhere", "data/README.md"], str(tmp_path / "nowhere")
    if name == "missing annotation file":
        os.remove(broken_cub / "train_test_split.txt")
        return TEACHER, {"MODEL": {"ARCH": "resnet18"}}, [], ["train_test_split.txt"], str(broken_cub)
    if name == "annotation names a missing image":
        image = _first_image(broken_cub)
        os.remove(image)
        return TEACHER, {"MODEL": {"ARCH": "resnet18"}}, [], [image.name], str(broken_cub)
    if name == "corrupt image":
        image = _first_image(broken_cub)
        image.write_bytes(b"this is not a jpeg")
        return TEACHER, {"MODEL": {"ARCH": "resnet18"}}, [], [image.name], str(broken_cub)
    if name == "teacher checkpoint missing":
        extra = {**teacher, "MODEL": {**teacher["MODEL"], "MODELDICT_T": str(tmp_path / "none.pth")}}
        return KD_SCRIPT, extra, [], ["none.pth", "not found"], tiny_cub
    if name == "teacher of another architecture":
        extra = {**teacher, "MODEL": {**teacher["MODEL"], "MODELDICT_T": _teacher(tmp_path, "resnet34")}}
        return KD_SCRIPT, extra, [], ["teacher_resnet34_4.pth", "resnet18"], tiny_cub
    if name == "teacher of another architecture, named in the checkpoint":
        resnet34 = _teacher(tmp_path, "resnet34", record_arch=True)
        extra = {**teacher, "MODEL": {**teacher["MODEL"], "MODELDICT_T": resnet34}}
        words = ["teacher_resnet34_4.pth", "was trained as resnet34", "asks for resnet18"]
        return KD_SCRIPT, extra, [], words, tiny_cub
    if name == "teacher of another class count":
        extra = {**teacher, "MODEL": {**teacher["MODEL"], "MODELDICT_T": _teacher(tmp_path, classes=9)}}
        return KD_SCRIPT, extra, [], ["9 classes", "DATA.NUM_CLASSES is 4"], tiny_cub
    if name == "ISRD without its loss weight":
        extra = {**teacher, "MODEL": {**teacher["MODEL"], "MODELDICT_T": _teacher(tmp_path)}}
        return ISRD_SCRIPT, extra, ["FSR.ETA", "0.0"], ["FSR.ETA is 0", "plain KD", "train_kd_5runs.py"], tiny_cub
    if name == "ISRD given another KD method":  # it was ignored, yet made a re-run with another "another config"
        extra = {**teacher, "MODEL": {**teacher["MODEL"], "MODELDICT_T": _teacher(tmp_path)}}
        return ISRD_SCRIPT, extra, ["FSR.ETA", "10.0", "MODEL.KDTYPE", "at"], \
            ["MODEL.KDTYPE is 'at'", "reads no MODEL.KDTYPE", "train at with tools_1_ts/train_kd_5runs.py"], tiny_cub
    if name == "output folder blocked by a file":
        blocker = tmp_path / "out"
        return TEACHER, {"MODEL": {"ARCH": "resnet18"}}, ["BASIC.OUTPUT_ROOT", str(blocker / "ckpt")], \
            ["cannot create the folder", f"the file {blocker} stands where a folder is needed"], tiny_cub
    if name == "output root where no folder can be made":  # /proc takes no new folders: ENOENT, not EACCES
        return TEACHER, {"MODEL": {"ARCH": "resnet18"}}, ["BASIC.OUTPUT_ROOT", "/proc/pixel_distillation/ckpt"], \
            ["cannot create the folder /proc/pixel_distillation/ckpt/", "choose another folder (BASIC.OUTPUT_ROOT"], \
            tiny_cub
    if name == "data folder to generate blocked by a file":
        blocker = tmp_path / "disk"
        blocker.write_text("a file where the data folder should be")
        return TEACHER, {"MODEL": {"ARCH": "resnet18"}, "DATA": {"GENERATE_IF_MISSING": True}}, [], \
            [f"cannot create the folder {blocker}", "choose another folder (DATA.DATADIR)"], str(blocker / "cub")
    if name == "student input too small":
        extra = {**teacher, "MODEL": {**teacher["MODEL"], "MODELDICT_T": _teacher(tmp_path)}}
        return KD_SCRIPT, extra, ["DATA.LESSEN_RATIO", "8.0"], ["8x8", "LESSEN_RATIO"], tiny_cub
    raise KeyError(name)


CASES = ["unknown key", "wrong type", "unknown arch", "unknown kdtype", "unknown dataset", "missing dataset folder",
         "missing annotation file", "annotation names a missing image", "corrupt image", "teacher checkpoint missing",
         "teacher of another architecture", "teacher of another architecture, named in the checkpoint",
         "teacher of another class count", "student input too small", "ISRD without its loss weight",
         "ISRD given another KD method", "output folder blocked by a file", "output root where no folder can be made",
         "data folder to generate blocked by a file"]


@pytest.mark.parametrize("name", CASES)
def test_user_mistakes_get_one_line_exit_2_and_nothing_written(name, tmp_path, broken_cub, tiny_cub, write_config,
                                                               monkeypatch, capsys):
    script, extra, opts, words, datadir = _case(name, tmp_path, broken_cub, tiny_cub)
    output_root = tmp_path / "out"
    config = write_config(extra, datadir, output_root=str(output_root))
    if name == "output folder blocked by a file":
        output_root.write_text("a file where the output folder should be")
    assert run_in_process(script, config, *opts, monkeypatch=monkeypatch) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert out == "", out  # not even the CPU-fallback warning: it waits until everything is checked
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    if name == "output folder blocked by a file":
        assert output_root.read_text() == "a file where the output folder should be"
    else:
        assert not output_root.exists(), "an error case wrote outputs"


def test_missing_config_file_is_one_line(tmp_path, monkeypatch, capsys):
    assert run_in_process(TEACHER, str(tmp_path / "missing.yaml"), monkeypatch=monkeypatch) == 2
    assert capsys.readouterr().err.strip() == f"error: config file not found: {tmp_path / 'missing.yaml'}"


def test_a_gpu_id_that_does_not_exist_is_refused(tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    config = write_config({"MODEL": {"ARCH": "resnet18"}}, tiny_cub, output_root=str(tmp_path / "out"))
    assert run_in_process(TEACHER, config, "BASIC.GPU_ID", "[3]", monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err
    assert "BASIC.GPU_ID" in err and "1 CUDA device" in err
    assert not (tmp_path / "out").exists()


ALL_SCRIPTS = sorted(os.path.relpath(p, REPO_ROOT) for pattern in ("tools/*.py", "tools_*/*.py")
                     for p in glob.glob(os.path.join(REPO_ROOT, pattern)))
CONFIG_SCRIPTS = [s for s in ALL_SCRIPTS if s.startswith("tools_") or s in ("tools/eval.py", "tools/benchmark.py")]


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_an_unknown_flag_is_one_line_in_every_script(script, tmp_path, monkeypatch, capsys):
    config = ["--config_file", str(tmp_path / "c.yaml")] if script in CONFIG_SCRIPTS else []
    assert run_cli(script, *config, "--no-such-flag", monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--no-such-flag" in line and f"{os.path.basename(script)} --help" in line, line


ONE_PROCESS_TOOLS = [s for s in ALL_SCRIPTS if s.startswith("tools/")]


@pytest.mark.parametrize("tool", ONE_PROCESS_TOOLS)
def test_a_tool_started_by_torchrun_is_refused_in_one_line_by_rank_0_alone(tool, monkeypatch, capsys, tmp_path):
    # Each process would do the whole job into the same files (eval's metrics, prepare_data's downloads).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        assert run_cli(tool, "--help", monkeypatch=monkeypatch) == 2
        err = capsys.readouterr().err
        expected = (f"error: {os.path.basename(tool)} works in one process, but torchrun started 2 (WORLD_SIZE 2), "
                    "each of which would do the whole job into the same files; run it with python (torchrun is for "
                    "the training scripts)\n")
        assert err == (expected if said else ""), rank
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1: one process, as asked
    assert run_cli(tool, "--help", monkeypatch=monkeypatch) == 0
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("script", CONFIG_SCRIPTS)
def test_a_missing_config_file_flag_is_one_line(script, monkeypatch, capsys):
    assert run_cli(script, "SOLVER.NUM_EPOCHS", "1", monkeypatch=monkeypatch) == 2
    assert "the following arguments are required: --config_file" in one_error_line(capsys.readouterr().err)


_PROBE = """
import runpy, sys
script, args = sys.argv[1], sys.argv[2:]
sys.argv = [script, *args]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exit:
    print("exit", exit.code, "torch" in sys.modules)
"""


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_help_and_config_mistakes_answer_without_loading_torch(script, tmp_path):
    # Loading torch takes seconds: --help and a mistyped key must not wait for it.
    mistakes = [["--help"]]
    if script in CONFIG_SCRIPTS:
        mistakes.append(["--config_file", os.path.join(REPO_ROOT, "configs/demo/cub_demo_isrd.yaml"),
                         "SOLVER.MOMENTUM", "0.9"])
    for args in mistakes:
        probe = subprocess.run([sys.executable, "-c", _PROBE, os.path.join(REPO_ROOT, script), *args],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
        expected_exit = 0 if args == ["--help"] else 2
        assert probe.stdout.splitlines()[-1] == f"exit {expected_exit} False", (args, probe.stdout, probe.stderr)


def test_overrides_may_come_before_the_config_file_flag(tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    # The override is applied (and refused by the config check), so the words around --config_file were read.
    config = write_config({"MODEL": {"ARCH": "resnet18"}}, tiny_cub, output_root=str(tmp_path / "out"))
    assert run_cli("tools_0_base/train_student_5runs.py", "SOLVER.NUM_EPOCHS", "0", "--config_file", config,
                   "BASIC.NUM_RUNS", "1", monkeypatch=monkeypatch) == 2
    assert one_error_line(capsys.readouterr().err) == "error: SOLVER.NUM_EPOCHS must be positive, got 0"
    assert not (tmp_path / "out").exists()


def _raises(exc: BaseException):
    @cli_main
    def main() -> None:
        raise exc

    return main


def test_a_tools_flag_given_twice_is_refused_not_the_last_one_taken():
    parser = ArgumentParser(prog="summarize.py")
    parser.add_argument("--root", default="ckpt")
    parser.add_argument("--sizes", nargs="+", type=int)
    parser.add_argument("--no-verify", action="store_true")
    args = parser.parse_args(["--root", "a", "--sizes", "56", "112", "--no-verify", "--no-verify"])  # (a switch: fine)
    assert (args.root, args.sizes, args.no_verify) == ("a", [56, 112], True)
    cases = ((["--root", "a", "--root=b"], "--root", "--root a, then --root b"),
             (["--ro", "a", "--root", "b"], "--root", "--root a, then --root b"),  # an abbreviation is the flag
             (["--sizes", "56", "--sizes", "112", "224"], "--sizes", "--sizes 56, then --sizes 112 224"))
    for argv, flag, given in cases:
        with pytest.raises(UserError) as err:
            parser.parse_args(argv)
        assert str(err.value) == f"{flag} is given twice ({given}); give {flag} once (see summarize.py --help)"
    assert parser.parse_args(["--root", "c"]).root == "c"  # the next command line starts afresh


def test_a_command_run_from_a_folder_that_was_deleted_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    gone = tmp_path / "old_checkout"
    gone.mkdir()
    monkeypatch.chdir(gone)  # (put back after the test)
    gone.rmdir()
    with pytest.raises(SystemExit) as exit_:
        _raises(AssertionError("not reached: the folder is checked first"))()
    assert exit_.value.code == 2
    assert one_error_line(capsys.readouterr().err) == ("error: the current folder no longer exists (it was deleted or "
                                                       "moved); cd to an existing folder and run the command again")


def test_a_folder_given_for_a_checkpoint_is_named_a_folder_not_missing(tmp_path):
    from lib.models.weights import load_weights

    with pytest.raises(UserError) as err:
        load_weights(torch.nn.Linear(1, 1), str(tmp_path), "teacher checkpoint MODEL.MODELDICT_T", "resnet18", 4)
    assert str(err.value) == f"teacher checkpoint MODEL.MODELDICT_T is a folder, not a file: {tmp_path}"


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    with pytest.raises(SystemExit) as exit_:
        _raises(KeyboardInterrupt())()
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert err.splitlines() == ["interrupted; re-run the same command to resume (training goes on from its last "
                                "saved epoch)"], err


@pytest.mark.parametrize("rank, says_it", [("0", True), ("1", False)])
def test_under_torchrun_rank_0_alone_prints_a_mistake_every_rank_exits_2(rank, says_it, monkeypatch, capsys):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as exit_:
        _raises(UserError("unknown config key SOLVER.MOMENTUM"))()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: unknown config key SOLVER.MOMENTUM\n" if says_it else "")


@pytest.mark.parametrize("code, reason", [(errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied"),
                                          (errno.EPERM, "Operation not permitted"),
                                          (errno.ENOSPC, "No space left on device"),
                                          (errno.EDQUOT, "Disk quota exceeded")])
def test_an_unwritable_or_full_output_folder_is_one_line_naming_the_file(code, reason, capsys):
    path = "/ro/ckpt/cub/exp/config.yaml"
    with pytest.raises(SystemExit) as exit_:
        _raises(OSError(code, os.strerror(code), path))()
    assert exit_.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    verb = "write" if code in (errno.ENOSPC, errno.EDQUOT) else "open or write"
    assert line.startswith(f"error: cannot {verb} {path}: {reason}; ") and "BASIC.OUTPUT_ROOT" in line, line
    assert "--out" in line and ("free some space" in line) == (code in (errno.ENOSPC, errno.EDQUOT)), line


def test_an_input_this_user_may_not_read_is_one_line_without_advice_to_choose_an_output_folder(tmp_path, monkeypatch,
                                                                                              capsys):
    # chmod 000 on an annotation file or a config: the advice was "choose a writable folder (BASIC.OUTPUT_ROOT ...)".
    path = tmp_path / "train_test_split.txt"
    path.write_text("1 1\n")
    monkeypatch.setattr(os, "access", lambda p, mode: not (os.fspath(p) == str(path) and mode == os.R_OK))  # (root)
    with pytest.raises(SystemExit) as exit_:
        _raises(PermissionError(errno.EACCES, "Permission denied", str(path)))()
    assert exit_.value.code == 2
    assert one_error_line(capsys.readouterr().err) == (f"error: cannot read {path}: Permission denied; fix its "
                                                       "permissions (this user may not read it)")


def test_a_folder_where_an_output_file_should_be_is_one_line(tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    config = write_config({"MODEL": {"ARCH": "resnet18"}}, tiny_cub, output_root=str(tmp_path / "out"))
    blocked = tmp_path / "out" / "cub" / "1runs_resnet18_64_seed0_0.01" / "config.yaml"
    blocked.mkdir(parents=True)  # a folder made by mistake where the experiment's config.yaml goes
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot open or write {blocked}: it is a folder, where a file is needed; "), line
    assert blocked.is_dir() and not os.listdir(blocked)


def test_a_folder_in_the_way_of_an_atomic_write_is_named_not_its_temporary_file():
    from lib.utils.errors import os_error_message

    # os.replace(tmp, path) onto a folder: filename is the (removed) temporary file, filename2 the folder.
    err = OSError(errno.EISDIR, "Is a directory", "/out/log/.stats.jsonl.x1.tmp", None, "/out/log/stats.jsonl")
    assert os_error_message(err).startswith("cannot open or write /out/log/stats.jsonl: it is a folder, ")


def test_tools_that_train_nothing_say_interrupted_without_a_resume_hint(capsys):
    @cli_main(interrupted=TOOL_INTERRUPTED_MESSAGE)
    def tool():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        tool()
    assert exit_.value.code == 130
    assert capsys.readouterr().err.splitlines() == ["interrupted"]
    for name in ("summarize", "eval", "benchmark", "cost", "prepare_data"):
        source = open(os.path.join(REPO_ROOT, "tools", f"{name}.py")).read()
        assert "@cli_main(interrupted=TOOL_INTERRUPTED_MESSAGE" in source, name


def test_a_gpu_out_of_memory_in_training_is_one_line_in_the_terminal_and_the_log(tiny_cub, write_config, tmp_path,
                                                                                  monkeypatch, capsys):
    import lib.engine.trainer as trainer

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError(OOM_MESSAGE)

    monkeypatch.setattr(trainer, "train_run", out_of_memory)
    config = write_config({"MODEL": {"ARCH": "resnet18"}}, tiny_cub, output_root=str(tmp_path / "out"))
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 2
    expected = ("error: the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                "capacity of 79.19 GiB of which 1.06 GiB is free.): use a smaller TRAIN.BATCH_SIZE or TEST.BATCH_SIZE, "
                "or mixed precision (TRAIN.AMP bf16 or fp16), or free the GPU of other processes")
    assert one_error_line(capsys.readouterr().err) == expected
    (log,) = glob.glob(str(tmp_path / "out" / "cub" / "*" / "train.log"))
    assert open(log).read().splitlines()[-1].endswith(expected)  # tools/summarize.py shows why it stopped


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_torchrun_every_rank_that_runs_out_of_gpu_memory_says_so_with_its_rank(rank, monkeypatch, capsys):
    # Unlike a config mistake, which every rank meets and rank 0 alone says, one card may be full or shared.
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as exit_:
        _raises(torch.cuda.OutOfMemoryError(OOM_MESSAGE))()
    assert exit_.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: rank 1: the GPU ran out of memory (" if rank == "1" else
                           "error: the GPU ran out of memory ("), line


def _met_while_training(message: str) -> UserError:
    err = UserError(message)
    err.every_rank = True  # as the trainer marks a mistake met while training (a rank's own images or loss)
    return err


_GLOO_PEER_GONE = ("[../third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                   "[127.0.0.1]:29500")


@pytest.mark.parametrize("rank", ["0", "1"])
@pytest.mark.parametrize("raised, says", [
    (_met_while_training("the loss is not finite at run 0 epoch 2"), "the loss is not finite at run 0 epoch 2"),
    (RuntimeError(_GLOO_PEER_GONE), f"another process of this DDP job has gone ({_GLOO_PEER_GONE}); its own line "
                                    "above, or torchrun's report, says why; re-run the same command to resume from "
                                    "the last saved epoch"),
    (RuntimeError("NCCL communicator was aborted on rank 1."), "another process of this DDP job has gone (NCCL"),
    (RuntimeError("NCCL error: remote process exited or there was a network error, ncclRemoteError"),
     "another process of this DDP job has gone (NCCL error"),
    (RuntimeError("[gloo/transport/tcp/pair.cc:598] Connection reset by peer"), "another process of this DDP job"),
    (RuntimeError("[gloo/transport/tcp/pair.cc:534] Write error: Broken pipe"), "another process of this DDP job"),
    (ValueError("Expected more than 1 value per channel when training, got input size torch.Size([1, 256, 1, 1])"),
     "a training batch of 1 image reached a batch-norm layer"),
])
def test_under_torchrun_what_one_rank_meets_while_training_is_said_by_that_rank(rank, raised, says, monkeypatch,
                                                                                capsys):
    # A rank's own images or loss, or a collective whose peer has gone: rank 1 alone may meet it. It was silent
    # there (rank 0 said nothing, or gloo's traceback).
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_:
        _raises(raised)()
    assert exit_.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {'rank 1: ' if rank == '1' else ''}{says}"), line


def test_a_lost_peer_outside_a_ddp_job_or_outside_gloo_is_left_as_it_is(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        _raises(RuntimeError(_GLOO_PEER_GONE))()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="reset by peer"):  # a dataset on a network share, say: not the job's peer
        _raises(RuntimeError("Connection reset by peer"))()


def test_a_training_batch_of_one_image_at_a_1x1_feature_map_is_one_line_naming_the_keys(capsys):
    bn = torch.nn.BatchNorm2d(4).train()
    with pytest.raises(ValueError) as raised:
        bn(torch.zeros(1, 4, 1, 1))  # what ResNet's last stage meets at a small input
    with pytest.raises(SystemExit) as exit_:
        _raises(raised.value)()
    assert exit_.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: a training batch of 1 image reached a batch-norm layer whose feature map is 1x1 "
                           "at this input size (Expected more than 1 value per channel when training"), line
    assert line.endswith("choose a TRAIN.BATCH_SIZE that leaves a larger last batch, or a larger input "
                         "(DATA.CROP_SIZE, DATA.LESSEN_RATIO)")
    with pytest.raises(ValueError, match="another"):
        _raises(ValueError("another"))()


def test_eval_says_which_batch_size_to_lower_when_the_gpu_runs_out_of_memory(tiny_cub, write_config, tmp_path,
                                                                             monkeypatch, capsys):
    import lib.analysis.evaluate as evaluate

    def out_of_memory(cfg, out_dir=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Allocation was preemptively rejected because it would "
                                          "exceed per_process_memory_fraction limit. Requested size: " + "9" * 200)

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", out_of_memory)
    config = write_config({"MODEL": {"ARCH": "resnet18"}}, tiny_cub, output_root=str(tmp_path / "out"))
    assert run_in_process("tools/eval.py", config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    head = "error: the GPU ran out of memory ("
    tail = "): use a smaller TEST.BATCH_SIZE or free the GPU of other processes"
    assert line.startswith(head + "CUDA out of memory. Allocation was preemptively ") and line.endswith(tail)
    detail = line[len(head):-len(tail)]  # torch's message without "is free": cut at 200 characters
    assert len(detail) == 200 and detail.endswith("9...")


def test_a_cublas_workspace_that_cannot_be_allocated_is_an_out_of_memory_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        _raises(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))()
    assert exit_.value.code == 2
    assert one_error_line(capsys.readouterr().err) == (
        "error: the GPU ran out of memory (CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
        "`cublasCreate(handle)`): use a smaller TRAIN.BATCH_SIZE or TEST.BATCH_SIZE, or mixed precision (TRAIN.AMP "
        "bf16 or fp16), or free the GPU of other processes")


def test_the_cpu_running_out_of_memory_is_an_out_of_memory_line(capsys):
    # torch's CPU allocator, at the machine's memory or a container's or ulimit's limit.
    with pytest.raises(SystemExit) as exit_:
        _raises(RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                             "you tried to allocate 2415919104 bytes. Error code 12 (Cannot allocate memory)"))()
    assert exit_.value.code == 2
    assert one_error_line(capsys.readouterr().err) == (
        "error: the CPU ran out of memory (tried to allocate 2.25 GiB more): use a smaller TRAIN.BATCH_SIZE or "
        "TEST.BATCH_SIZE, or mixed precision (TRAIN.AMP bf16 or fp16), or free the memory of other processes")


def _closed_stdout(command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` with a standard output whose reader has gone, as `command | head -1` once head has its line."""
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    proc.stdout.close()  # before the command prints anything: importing torch takes seconds
    err = proc.stderr.read()
    return subprocess.CompletedProcess(command, proc.wait(), "", err)


def test_a_tool_whose_output_pipe_closes_stops_quietly_with_the_status_of_a_closed_pipe(tmp_path):
    proc = _closed_stdout([sys.executable, "tools/cost.py", "--archs", "resnet18", "--sizes", "32", "--batch-sizes",
                           "1", "--device", "cpu", "--warmup", "0", "--repeats", "1", "--out", str(tmp_path / "c")])
    assert (proc.returncode, proc.stderr) == (errors.CLOSED_PIPE_EXIT, ""), proc.stderr


def test_training_goes_on_into_its_log_when_its_output_pipe_closes(tiny_cub, write_config, tmp_path):
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub,
                          output_root=str(tmp_path / "out"))
    proc = _closed_stdout([sys.executable, TEACHER, "--config_file", config])
    assert proc.returncode == 0 and "Logging error" not in proc.stderr, proc.stderr
    (exp,) = glob.glob(str(tmp_path / "out" / "cub" / "*"))
    assert os.path.isfile(os.path.join(exp, "results.json"))
    assert "best_acc" in open(os.path.join(exp, "train.log")).read()  # the lines stdout lost


def test_a_broken_pipe_other_than_standard_output_keeps_its_traceback():
    # A pipe to a worker process that died is not `| head`: it stays visible.
    with pytest.raises(BrokenPipeError):
        _raises(BrokenPipeError(errno.EPIPE, "Broken pipe"))()


@pytest.mark.parametrize("content, problem", [
    (b"", "it is empty"),
    (b"hello\n", "it is a text file, not a torch checkpoint"),
    (b"\x00\x01\x02binary" * 10, "it is not a torch checkpoint (neither a torch.save archive nor a pickle)"),
    ("truncated", "it is truncated or damaged (5,000 bytes, not a whole torch archive)"),
], ids=["empty", "text", "binary", "truncated"])
def test_a_file_that_cannot_be_a_checkpoint_says_what_it_is(content, problem, tmp_path):
    from lib.models.weights import load_weights

    path = tmp_path / "t.pth"
    if content == "truncated":
        torch.save({"state_dict": build_model("resnet18", 4, False).state_dict()}, path)
        path.write_bytes(path.read_bytes()[:5000])
    else:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_weights(build_model("resnet18", 4, False), str(path), "teacher checkpoint MODEL.MODELDICT_T",
                     "resnet18", 4)
    assert str(err.value) == (f"teacher checkpoint MODEL.MODELDICT_T {path} cannot be loaded: {problem}; give a whole "
                              "torch checkpoint (a run's model_best.pth or last.pth)")


def test_a_checkpoint_this_user_may_not_read_says_so_not_that_it_may_be_no_checkpoint(tmp_path, monkeypatch):
    from lib.models import weights

    path = tmp_path / "t.pth"
    torch.save({"state_dict": build_model("resnet18", 4, False).state_dict()}, path)

    def forbidden(p):  # chmod 000, as a user other than root meets it
        raise PermissionError(errno.EACCES, "Permission denied", p)

    monkeypatch.setattr(weights, "_load_weights_only", forbidden)
    with pytest.raises(UserError) as err:
        weights.load_weights(build_model("resnet18", 4, False), str(path), "teacher checkpoint MODEL.MODELDICT_T",
                             "resnet18", 4)
    assert str(err.value) == (f"teacher checkpoint MODEL.MODELDICT_T {path} cannot be read: Permission denied; fix its "
                              "permissions (this user may not read it)")


def test_a_damaged_pretrained_weight_file_says_so(tmp_path):
    from lib.models.model_builder import _read_weight_file

    path = tmp_path / "w.pth"
    path.write_text("not weights\n")
    with pytest.raises(UserError, match=r"cannot read weight file .*w.pth: it is a text file, not a torch checkpoint; "
                                        r"give a .pth or .safetensors file of weights \(MODEL.PRETRAIN_FILE"):
        _read_weight_file(str(path))


def test_a_relative_path_missing_from_the_repository_root_but_found_here_says_where_it_is_looked_for(tmp_path,
                                                                                                     monkeypatch):
    # Config paths are taken from the repository root (the original release's convention), not the current folder.
    (tmp_path / "teacher.pth").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    missing = os.path.join(REPO_ROOT, "teacher.pth")
    with pytest.raises(UserError) as err:
        errors.require_file(missing, "teacher checkpoint MODEL.MODELDICT_T")
    assert str(err.value) == (
        f"teacher checkpoint MODEL.MODELDICT_T not found: {missing} (relative paths in a config, an override or a "
        f"flag are taken from the repository root {REPO_ROOT}, not the current folder, where teacher.pth exists: give "
        f"it as {tmp_path / 'teacher.pth'})")
    monkeypatch.chdir(REPO_ROOT)  # from the root itself there is nothing to say
    with pytest.raises(UserError) as err:
        errors.require_file(missing, "teacher checkpoint MODEL.MODELDICT_T")
    assert str(err.value) == f"teacher checkpoint MODEL.MODELDICT_T not found: {missing}"


def test_a_relative_dataset_folder_found_only_from_the_current_folder_says_where_it_is_looked_for(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    # A job that copies the data into its own folder and runs there with DATA.DATADIR cub.
    shutil.copytree(tiny_cub, tmp_path / "job" / "cub")
    monkeypatch.chdir(tmp_path / "job")
    config = write_config({"MODEL": {"ARCH": "resnet18"}}, "cub_in_this_job")
    assert run_in_process(TEACHER, config, "DATA.DATADIR", "cub", monkeypatch=monkeypatch) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: DATA.DATADIR {os.path.join(REPO_ROOT, 'cub')} does not exist or is not a folder (relative paths in a "
        f"config, an override or a flag are taken from the repository root {REPO_ROOT}, not the current folder, where "
        f"cub exists: give it as {tmp_path / 'job' / 'cub'}); expected the CUB_200_2011 folder holding images.txt, "
        "image_class_labels.txt, train_test_split.txt and images/<class folder>/<image>.jpg (python "
        "tools/prepare_data.py downloads both datasets into data/; see data/README.md)")
    assert not os.path.exists(os.path.join(REPO_ROOT, "cub"))


@pytest.mark.parametrize("tool, flag", [
    ("tools/summarize.py", "--root"), ("tools/summarize.py", "--out"), ("tools/cost.py", "--out"),
    ("tools/prepare_data.py", "--root"), (TEACHER, "--config_file"),
])
def test_an_empty_file_or_folder_flag_is_refused_as_an_unset_variable(tool, flag, monkeypatch, capsys, tmp_path):
    # `--root "$DIR"` with DIR unset: summarize searched the whole checkout and wrote into it; cost.py wrote there.
    monkeypatch.chdir(tmp_path)
    assert run_cli(tool, flag, "", monkeypatch=monkeypatch) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: argument {flag}: is empty (an unset shell variable?); name a file or folder (see "
        f"{os.path.basename(tool)} --help)")
    assert os.listdir(tmp_path) == []


def test_other_runtime_errors_keep_their_traceback():
    # A bug is not a mistake of the user's: it stays visible with its traceback.
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _raises(RuntimeError("shape mismatch"))()


def test_other_os_errors_keep_their_traceback():
    # A missing file or a broken pipe is not fixed by choosing another folder: it stays visible as a bug.
    with pytest.raises(FileNotFoundError):
        _raises(FileNotFoundError(errno.ENOENT, "No such file or directory", "x"))()


def test_a_multi_line_user_error_is_printed_on_one_line(capsys):
    with pytest.raises(SystemExit):
        _raises(UserError("archive.tgz is damaged:\n- method gz: not a gzip file\n"))()
    assert one_error_line(capsys.readouterr().err) == "error: archive.tgz is damaged: - method gz: not a gzip file"


@pytest.mark.parametrize("script", CONFIG_SCRIPTS)
def test_every_config_script_takes_config_file_with_a_hyphen_too(script, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "missing.yaml"
    assert run_cli(script, "--config-file", str(missing), monkeypatch=monkeypatch) == 2
    assert one_error_line(capsys.readouterr().err) == f"error: config file not found: {missing}"


def test_a_list_the_shell_split_at_a_space_is_one_line_naming_the_key(monkeypatch, capsys):
    config = os.path.join(REPO_ROOT, "configs/demo/cub_demo_teacher.yaml")
    assert run_cli(TEACHER, "--config_file", config, "SOLVER.LR_STEPS", "[3,", "6]", monkeypatch=monkeypatch) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "error: the shell split the value of SOLVER.LR_STEPS at its spaces: [3, 6] came as 2 words; write the list "
        'without spaces, SOLVER.LR_STEPS [3,6], or in quotes, SOLVER.LR_STEPS "[3, 6]"')


@pytest.mark.parametrize("script, defaults", [
    ("tools/benchmark.py", ["--steps N timed training steps per figure (default: 20)",
                            "--warmup N untimed steps before each figure (default: 3)",
                            "their medians are reported (default: 3)"]),
    ("tools/cost.py", ["input sizes in pixels (default: 224 112 56)", "memory measurements (default: 1 64)",
                       "(default: ckpt/cost)", "classifier outputs (default: 200)",
                       "(default: 20 on a GPU, 5 on the CPU)"]),
])
def test_tool_help_names_each_flag_default(script, defaults, monkeypatch, capsys):
    assert run_cli(script, "--help", monkeypatch=monkeypatch) == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in defaults:
        assert default in text, (default, text)


def test_summarize_with_a_missing_root_is_one_line_without_loading_torch(tmp_path):
    # Loading torch takes seconds; a mistyped --root answers at once, in the words of lib.analysis.check_output_root.
    missing = tmp_path / "no_such_root"
    probe = subprocess.run([sys.executable, "-c", _PROBE, os.path.join(REPO_ROOT, "tools/summarize.py"), "--root",
                            str(missing)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert probe.stdout.splitlines()[-1] == "exit 2 False", (probe.stdout, probe.stderr)
    assert one_error_line(probe.stderr) == f"error: output root {missing} does not exist or is not a folder (--root)"


def test_an_output_folder_through_a_link_to_nothing_is_one_line_naming_the_link(tiny_cub, write_config, tmp_path,
                                                                                monkeypatch, capsys):
    # A scratch disk that is not mounted: the link is there, its target is not.
    link = tmp_path / "scratch"
    os.symlink(tmp_path / "unmounted" / "ckpt", link)
    config = write_config({"MODEL": {"ARCH": "resnet18"}}, tiny_cub, output_root=str(link))
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{link} is a link to {tmp_path / 'unmounted' / 'ckpt'}, which does not exist" in line, line
    assert not (tmp_path / "unmounted").exists()


def test_an_image_that_stops_decoding_in_a_loader_worker_is_the_workers_one_line(broken_cub, write_config, tmp_path,
                                                                                 monkeypatch, capsys):
    # The pil pipeline checks headers when it builds the dataset and decodes in loader workers: a truncated JPEG
    # fails there, and torch re-raises the worker's UserError with the worker's traceback in its message.
    image = _first_image(broken_cub)
    image.write_bytes(image.read_bytes()[:-30])
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "DATA": {"PIPELINE": "pil"},
                           "BASIC": {"NUM_WORKERS": 1}}, str(broken_cub), output_root=str(tmp_path / "out"))
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot read image {image} (OSError: image file is truncated"), line
    assert "Traceback" not in line and "worker" not in line, line
    (log,) = glob.glob(str(tmp_path / "out" / "cub" / "*" / "train.log"))
    assert open(log).read().splitlines()[-1].endswith(line), "train.log ends with the line the script printed"


def _stop_handlers(on_sigterm, on_ctrl_c):
    """SIGTERM (and SIGHUP, SIGUSR1) and Ctrl-C handled by `on_sigterm` and `on_ctrl_c` for the test, then as the
    test runner had them."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGINT)}
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(s, on_sigterm)
    signal.signal(signal.SIGINT, on_ctrl_c)
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture
def scripts_signal_handlers():
    """SIGTERM and Ctrl-C handled as cli_main handles them, for the test."""
    yield from _stop_handlers(raise_terminated, raise_interrupted)


@pytest.fixture
def python_s_default_handlers():
    """SIGTERM and Ctrl-C handled as Python handles them by default, for the test, whatever the test runner was
    started with (a shell without job control starts a background job, `pytest ... &`, with Ctrl-C ignored)."""
    yield from _stop_handlers(signal.SIG_DFL, signal.default_int_handler)


def _signal_this_thread(signum: int) -> None:
    # To this thread: os.kill may hand the signal to another of the process's threads (torch's), whose handler
    # call can lag past the block. Python runs the handler as soon as this call returns.
    signal.pthread_kill(threading.get_ident(), signum)


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated),
                                            (signal.SIGHUP, HungUp), (signal.SIGUSR1, Signalled)])
def test_a_ctrl_c_or_sigterm_inside_a_held_block_is_raised_at_its_end_not_lost(signum, raised,
                                                                               scripts_signal_handlers):
    # As while the loader workers are joined in a __del__, where Python would print and drop the exception.
    finished = []
    with pytest.raises(raised):
        with interrupts_held():
            with interrupts_held():  # blocks nest: the outer one raises
                _signal_this_thread(signum)
                finished.append("inner")
            finished.append("outer")
    assert finished == ["inner", "outer"]
    with interrupts_held():  # nothing left held from before
        finished.append("again")
    assert signal.getsignal(signal.SIGINT) is raise_interrupted
    assert signal.getsignal(signal.SIGTERM) is raise_terminated


def test_python_s_own_ctrl_c_handler_is_not_held(python_s_default_handlers):
    # A library caller that kept Python's handler: only the scripts' handlers know about the blocks.
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            _signal_this_thread(signal.SIGINT)
            pytest.fail("not raised at once")


@pytest.mark.parametrize("raised, status", [(KeyboardInterrupt, 130), (Terminated, 143), (HungUp, 129),
                                           (Signalled, 138)])
def test_a_command_stopped_by_ctrl_c_or_a_stop_signal_is_its_one_line_and_the_shells_status(raised, status, capsys):
    def stopped() -> None:
        raise raised

    with pytest.raises(SystemExit) as exit_:
        cli_main(stopped)()
    assert exit_.value.code == status
    assert capsys.readouterr().err.splitlines() == [errors.INTERRUPTED_MESSAGE]


def test_a_ctrl_c_as_a_command_ends_and_puts_its_handlers_back_is_its_one_line(monkeypatch, capsys):
    # It used to escape cli_main from its own `finally` as a KeyboardInterrupt traceback.
    def interrupted_while_ending() -> None:
        monkeypatch.undo()
        raise KeyboardInterrupt

    monkeypatch.setattr(errors, "forget_held_interrupts", interrupted_while_ending)
    with pytest.raises(SystemExit) as exit_:
        cli_main(lambda: None)()
    assert exit_.value.code == errors.INTERRUPTED_EXIT
    assert capsys.readouterr().err.splitlines() == [errors.INTERRUPTED_MESSAGE]


def test_a_ctrl_c_while_the_libraries_exit_callbacks_run_ends_the_finished_command_quietly(tmp_path):
    # After the results table, Python runs torch's exit callbacks (about a second): a Ctrl-C there printed
    # "Exception ignored in atexit callback" and a traceback, and the exit status was 0.
    script = tmp_path / "command.py"
    script.write_text(f"""import atexit, sys, time
sys.path.insert(0, {REPO_ROOT!r})
from lib.utils.errors import cli_main

@cli_main
def main():
    atexit.register(time.sleep, 30)  # a library's slow exit callback, registered before the command ends
    print("finished", flush=True)

main()
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline() == "finished\n"
    time.sleep(1.0)  # in the exit callback
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert (proc.returncode, err) == (errors.INTERRUPTED_EXIT, "")


def test_the_same_stop_sent_again_is_held_with_the_first(scripts_signal_handlers):
    # torchrun's agent passes the group's SIGTERM (or Ctrl-C) on to its workers, a PARALLEL_RUNS parent stops its
    # run processes: the second copy comes milliseconds after the first, still inside the block.
    finished = []
    with pytest.raises(Terminated):
        with interrupts_held():
            _signal_this_thread(signal.SIGTERM)
            _signal_this_thread(signal.SIGTERM)
            _signal_this_thread(signal.SIGINT)
            finished.append("held")
    assert finished == ["held"]


def test_a_signal_well_after_the_held_one_raises_at_once(scripts_signal_handlers, monkeypatch):
    # A block that is stuck (a loader worker that hangs): the user presses Ctrl-C again, seconds later.
    clock = iter([100.0, 100.0 + errors._SAME_STOP_S])
    monkeypatch.setattr(errors.time, "monotonic", lambda: next(clock))
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            _signal_this_thread(signal.SIGTERM)
            finished.append("held")
            _signal_this_thread(signal.SIGINT)
            finished.append("not reached")
    assert finished == ["held"]


class _LockTakingLoader:
    """Stands for a DataLoader iterator handing an index to a worker: it takes a queue's lock for each item, and
    the signal arrives while it holds it (CPython runs a handler between any two calls)."""

    def __init__(self, signal_at: int, signum: int):
        self.lock = threading.Lock()
        self.made = 0
        self.signal_at, self.signum = signal_at, signum

    def __iter__(self):
        return self

    def __next__(self):
        self.lock.acquire()
        if self.made == self.signal_at:
            _signal_this_thread(self.signum)  # raised here, the exception would leave the lock taken
        self.lock.release()
        self.made += 1
        return self.made


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated),
                                            (signal.SIGHUP, HungUp), (signal.SIGUSR1, Signalled)])
def test_a_signal_while_the_loader_holds_a_lock_is_raised_after_it_lets_go(signum, raised, scripts_signal_handlers):
    # Raised inside, the lock stayed taken and the loader's shutdown waited on it for ever: the run printed
    # "interrupted" and never exited.
    loader = _LockTakingLoader(signal_at=2, signum=signum)
    seen = []
    with pytest.raises(raised):
        for item in signal_safe_iter(loader):
            seen.append(item)
    assert seen == [1, 2]  # the item made under the signal is not handed on
    assert loader.made == 3
    assert not loader.lock.locked()


def test_signal_safe_iter_yields_every_item_and_ends():
    assert list(signal_safe_iter(range(4))) == [0, 1, 2, 3]
    assert list(signal_safe_iter([])) == []
    assert (errors._hold["depth"], errors._hold["received"]) == (0, [])


def test_held_blocks_do_nothing_outside_the_main_thread(scripts_signal_handlers):
    depths = []

    def worker():
        with interrupts_held():
            depths.append(errors._hold["depth"])

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert depths == [0]  # else the main thread's signals would be held while another thread is in a block


def test_a_process_forked_inside_a_held_block_is_not_in_it():
    # Loader workers are forked as the iterator starts, inside the block; their Ctrl-C must not wait for its end.
    with interrupts_held():
        pid = os.fork()
        if pid == 0:
            os._exit(errors._hold["depth"])
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_command_leaves_every_held_block_when_it_ends():
    # A signal raised just as a block began or ended can skip its exit; the next command must not start inside.
    @cli_main
    def main():
        interrupts_held().__enter__()

    main()
    assert errors._hold["depth"] == 0


def test_scripts_take_sigterm_and_ctrl_c_while_they_run_and_put_back_the_defaults(python_s_default_handlers):
    seen = {}

    @cli_main
    def main():
        seen.update({s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)})

    main()
    assert seen == {signal.SIGTERM: raise_terminated, signal.SIGINT: raise_interrupted}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a caller's own choice is kept (`nohup`, a background job)
    main()
    assert seen[signal.SIGINT] is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
