"""Several processes on the CPU: DDP under torchrun (gloo, 2 processes), runs in parallel, mixed precision."""

import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from lib.config import REPO_ROOT, get_cfg, load_config
from lib.distillers import build_distiller
from lib.engine import trainer
from lib.engine.distributed import parallel_slots
from lib.engine.setup import slot_devices
from lib.engine.trainer import autocast
from lib.models.model_builder import build_model
from lib.utils.errors import INTERRUPTED_MESSAGE, TERMINATED_EXIT, UserError
from lib.utils.processes import process_ended

from .conftest import run_in_process, run_script

STUDENT = "tools_0_base/train_student_5runs.py"
EXTRA = {"MODEL": {"ARCH": "resnet18"}, "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}, "BASIC": {"DEVICE": "cpu"}}


# The student script, run by each rank, that also writes the final weights of the student it trained (rank 1 saves
# none): DDP averages every step's gradients, so the ranks end with the same weights; without it, each rank trained
# a replica on its own half of the images, and rank 0 saved one of them.
_RECORDING_WEIGHTS = """
import atexit, hashlib, os, runpy, sys
from lib.engine import trainer
out, built = sys.argv[1], []
real_build = trainer.build_distiller
trainer.build_distiller = lambda *args, **kwargs: built.append(real_build(*args, **kwargs)) or built[-1]
def record():
    digest = hashlib.sha256()
    for value in built[-1].student.parameters():  # (BN statistics: each rank's last batches, broadcast next step)
        digest.update(value.detach().contiguous().numpy().tobytes())
    with open(os.path.join(out, "rank" + os.environ["RANK"]), "w") as f:
        f.write(digest.hexdigest())
atexit.register(record)
script = sys.argv[2]
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def test_ddp_under_torchrun_with_gloo_trains_one_run_and_rank_0_alone_writes(tiny_cub, write_config, tmp_path):
    # The tensor pipeline; what the device pipeline does differently under DDP, its loader, is checked below.
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 1, "PARALLEL_RUNS": 2}}, tiny_cub)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    recording = tmp_path / "recording_weights.py"
    recording.write_text(_RECORDING_WEIGHTS)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(recording), str(tmp_path), os.path.join(REPO_ROOT, STUDENT), "--config_file", config],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    weights = [(tmp_path / f"rank{rank}").read_text() if (tmp_path / f"rank{rank}").exists() else None
               for rank in (0, 1)]
    assert weights[0] is not None and weights[0] == weights[1], (weights, proc.stderr[-3000:])
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_32_seed0_0.01"
    results = json.loads((exp / "results.json").read_text())
    assert [(r["seed"], r["world_size"]) for r in results["runs"]] == [(0, 2)]
    assert torch.load(exp / "ckpt" / "run0" / "last.pth", weights_only=False)["world_size"] == 2
    log = (exp / "train.log").read_text()
    assert "2 DDP processes" in log
    warning = ("warning: BASIC.PARALLEL_RUNS 2 is ignored under torchrun: the 2 DDP processes train each run "
               "together, one run after another")
    assert log.count(warning) == 1 and proc.stdout.count(warning) == 1, "a warning was said by more than one rank"
    assert log.count("run 0 epoch 2/2") == 1, "a line was logged by more than one rank"
    best = torch.load(exp / "ckpt" / "run0" / "model_best.pth", weights_only=False)
    build_model("resnet18", 4, False).load_state_dict(best["state_dict"])
    # Re-run when finished: its results are printed once, not by every rank.
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           os.path.join(REPO_ROOT, STUDENT), "--config_file", config],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and proc.stdout.count("is finished; its results") == 1, proc.stdout + proc.stderr


def test_under_torchrun_a_mistake_met_while_training_is_said_by_each_rank_that_meets_it(tiny_cub, write_config,
                                                                                         tmp_path):
    # Each rank decodes its own half of the images (the pil pipeline checks headers only before training): rank 1
    # met a damaged one in silence, and the user saw rank 0's "interrupted" or gloo's traceback.
    data = tmp_path / "cub"
    shutil.copytree(tiny_cub, data)
    for image in data.glob("images/*/*.jpg"):
        content = image.read_bytes()
        image.write_bytes(content[: len(content) * 2 // 3])  # a whole header: passes the check, fails to decode
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 1, "NUM_WORKERS": 0},
                           "DATA": {**EXTRA["DATA"], "PIPELINE": "pil"}}, str(data))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           os.path.join(REPO_ROOT, STUDENT), "--config_file", config],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if "cannot read image" in line]
    assert any(line.startswith("error: cannot read image ") for line in said), proc.stderr[-3000:]
    assert any(line.startswith("error: rank 1: cannot read image ") for line in said), proc.stderr[-3000:]


def test_runs_saved_by_another_number_of_ddp_processes_are_not_trained_on_in_this_one(tiny_cub, write_config,
                                                                                        tmp_path, monkeypatch, capsys):
    # TRAIN.BATCH_SIZE is per process: a run stopped under torchrun and resumed by python (or the reverse) would go
    # on with another batch, and runs trained so beside runs of the first count would mix two batches in one mean.
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 2}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "2runs_resnet18_32_seed0_0.01"
    run0_result, run1_last = exp / "ckpt" / "run0" / "result.json", exp / "ckpt" / "run1" / "last.pth"
    assert json.loads(run0_result.read_text())["world_size"] == 1
    (exp / "results.json").unlink()
    (exp / "ckpt" / "run1" / "result.json").unlink()  # run 1 stopped after its last epoch's last.pth

    def saved_by(path, world_size):
        if path.suffix == ".json":
            row = json.loads(path.read_text())
            path.write_text(json.dumps({**row, "world_size": world_size}))
        else:
            state = torch.load(path, weights_only=False)
            if world_size is None:
                del state["world_size"]
            else:
                state["world_size"] = world_size
            torch.save(state, path)

    saved_by(run0_result, 2)  # run 0 finished under torchrun with 2 processes
    before = run1_last.read_bytes()
    capsys.readouterr()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 2
    assert capsys.readouterr().err == (
        f"error: run 0 of {exp} was trained by 2 DDP processes ({run0_result} says so; 16 images a step: "
        "TRAIN.BATCH_SIZE 8 per process), and this command trains with one process (8 a step); re-run it under "
        "torchrun with 2 processes in all (--nproc_per_node 2 on one node) to go on with the same batch, or add "
        "BASIC.FRESH_START True to start over\n")
    assert run1_last.read_bytes() == before and not (exp / "results.json").exists()

    saved_by(run0_result, 1)
    saved_by(run1_last, 2)  # run 1 stopped under torchrun
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 2
    assert f"error: run 1 of {exp} was trained by 2 DDP processes " in capsys.readouterr().err

    saved_by(run1_last, None)  # written before the count was recorded: not known, not refused
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert [r["world_size"] for r in json.loads((exp / "results.json").read_text())["runs"]] == [1, 1]

    # Finished runs are only re-reported: no batch is taken, whatever trained them.
    saved_by(run0_result, 2)
    (exp / "results.json").unlink()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0


def _killed_outright(*args) -> None:
    """A run process's work that ends it as the out-of-memory killer would (spawned: importable by name)."""
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_run_process_killed_outright_is_one_line_not_a_broken_pool_traceback(tiny_cub, write_config, tmp_path,
                                                                               monkeypatch, capsys):
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 2, "PARALLEL_RUNS": 2}}, tiny_cub)
    monkeypatch.setattr(trainer, "_parallel_worker", _killed_outright)
    # Its semaphores are left to the resource tracker, started quiet about them (test_processes).
    quiet = []
    monkeypatch.setattr(trainer, "start_quiet_resource_tracker", lambda: quiet.append(True))
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 2
    assert quiet == [True]
    exp = tmp_path / "ckpt" / "cub" / "2runs_resnet18_32_seed0_0.01"
    line = (f"error: a run process of {exp} ended abruptly (killed outright: by the system's out-of-memory killer, "
            "or kill -9?), and the other runs were stopped; their last saved epochs are kept: re-run the same command "
            "to resume (with fewer BASIC.PARALLEL_RUNS if memory ran out)")
    assert capsys.readouterr().err == line + "\n"
    assert (exp / "train.log").read_text().splitlines()[-1].endswith(line)


def _killed_holding_a_semaphore(*args) -> None:
    """_killed_outright, once the run process has made a semaphore the resource tracker knows of (as a training one
    has: loaders, progress bars)."""
    import multiprocessing

    lock = multiprocessing.get_context("spawn").Lock()  # (kept: a lock let go of unlinks its semaphore at once)
    os.kill(os.getpid(), signal.SIGKILL)
    del lock


# The command in a process whose default start method is forkserver (Python 3.14's on Linux): a progress bar's lock
# starts the resource tracker while the data are checked, before the run processes.
_KILLED_UNDER_FORKSERVER = """
import multiprocessing, runpy, sys
multiprocessing.set_start_method("forkserver")
from lib.engine import trainer
from tests.test_distributed import _killed_holding_a_semaphore
trainer._parallel_worker = _killed_holding_a_semaphore
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# A run process's initializer called as concurrent.futures calls it, met by the SIGTERM that stops the runs while it
# runs (the process starts with SIGTERM ignored, as the pool's are).
_SIGTERM_IN_THE_INITIALIZER = """
import os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
from lib.engine import trainer
trainer.stop_when_parent_dies = lambda: os.kill(os.getpid(), signal.SIGTERM)
try:
    trainer._stop_on_sigterm()
except BaseException:
    print("Exception in initializer:", file=sys.stderr)
    raise SystemExit(1)
print("went on to wait for a task")
"""


def test_a_run_process_stopped_while_it_starts_ends_quietly_with_the_terminated_status():
    # The pool logged the SystemExit the SIGTERM raised in its initializer as a failure, in a traceback after the
    # command's one line (seen when a run process was killed with -9 as the other started).
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_IN_THE_INITIALIZER], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (TERMINATED_EXIT, "", "")


def test_a_killed_run_process_leaves_only_the_one_line_whatever_the_default_start_method(tiny_cub, write_config):
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 2, "PARALLEL_RUNS": 2}}, tiny_cub)
    proc = subprocess.run([sys.executable, "-c", _KILLED_UNDER_FORKSERVER, os.path.join(REPO_ROOT, STUDENT),
                           "--config_file", config], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))  # (waits for the tracker: it shares stderr)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "ended abruptly (killed outright" in proc.stderr, proc.stderr


def test_runs_trained_in_parallel_processes_are_gathered_into_one_results_file(tiny_cub, write_config, tmp_path):
    # Three runs in two processes: one process trains two of them.
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 3, "PARALLEL_RUNS": 2},
                           "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    # A baseline reads no MODEL.MODELDICT_S: the main process says so once, the run processes not again.
    proc = run_script(STUDENT, config, "MODEL.MODELDICT_S", "student.pth")
    assert "2 runs at a time" in proc.stdout
    assert proc.stdout.count("warning: MODEL.MODELDICT_S student.pth is ignored") == 1, proc.stdout
    exp = tmp_path / "ckpt" / "cub" / "3runs_resnet18_32_seed0_0.01"
    assert (exp / "train.log").read_text().count("warning: MODEL.MODELDICT_S student.pth is ignored") == 1
    results = json.loads((exp / "results.json").read_text())
    assert [(r["run"], r["seed"]) for r in results["runs"]] == [(0, 0), (1, 1), (2, 2)]
    for run in (0, 1, 2):
        assert (exp / "ckpt" / f"run{run}" / "model_best.pth").is_file()


@pytest.mark.parametrize("pipeline", ["tensor", "device"])
def test_each_ddp_rank_reads_its_own_half_of_every_epoch(tiny_cub, write_config, pipeline):
    import argparse

    from lib.config import load_config
    from lib.datasets import build_dataset
    from lib.engine.distributed import DistInfo
    from lib.engine.trainer import build_loader

    cfg = load_config(argparse.Namespace(config_file=write_config(EXTRA, tiny_cub), opts=["DATA.PIPELINE", pipeline]))
    train_set = build_dataset(cfg, is_train=True)
    shards = []
    for rank in (0, 1):
        loader = build_loader(cfg, train_set, True, torch.device("cpu"), DistInfo(rank, 2, rank))
        loader.batch_sampler.set_epochs([5])
        shards.append([index for batch in loader.batch_sampler for index, _ in batch])
        # What the rank trains on is its shard's images, in its order.
        targets = torch.cat([batch["target"] for batch in loader]).tolist()
        assert targets == [train_set.samples[index][1] for index in shards[-1]], rank
    assert len(shards[0]) == len(shards[1]) == len(train_set) // 2
    assert sorted(shards[0] + shards[1]) == list(range(len(train_set)))


def _train_an_epoch_as_rank(rank: int, store: str, out: str) -> None:
    """A DDP rank in miniature: train_epoch on this rank's own batches; its figures written to `out`.rank."""
    import torch.distributed as dist

    from lib.engine.trainer import train_epoch

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    model = torch.nn.Linear(1, 1)
    model.set_epoch = lambda epoch: None  # (a Distiller's)
    target = torch.arange(4)
    # Rank 0 classifies all its images right with loss_ce 1, rank 1 all wrong with loss_ce 2; 3 and 1 steps.
    batches = [{"image": None, "image_large": None, "target": target}] * (3 if rank == 0 else 1)

    def step(image, image_large, target, epoch):
        logits = torch.nn.functional.one_hot((target + rank) % 4, 4).float()
        return logits, {"loss_ce": model.weight.sum() * 0 + rank + 1}

    cfg = get_cfg()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = train_epoch(model, iter(batches), len(batches), lambda batch: batch, optimizer, scaler, cfg,
                        torch.device("cpu"), 1, f"rank {rank}", step)
    dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(stats, f)


def test_an_epochs_train_loss_and_top1_are_over_every_ddp_ranks_images(tmp_path):
    # Before, each rank logged its own shard's figures, and rank 0's were the ones written.
    torch.multiprocessing.spawn(_train_an_epoch_as_rank, args=(str(tmp_path / "store"), str(tmp_path / "stats")),
                                nprocs=2)
    for rank in (0, 1):
        stats = json.loads((tmp_path / f"stats.{rank}").read_text())
        assert stats == pytest.approx({"loss_ce": 1.25, "loss": 1.25, "train_top1": 75.0}), rank


def _compiled_ddp_step_as_rank(rank: int, store: str, out: str) -> None:
    """A DDP rank running compile_step's DDP path: its dynamo graph breaks and step outputs written to `out`.rank."""
    import functools

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lib.engine.trainer import compile_step

    class Step(torch.nn.Module):  # a distiller in miniature: (image, image_large, target, epoch) -> outputs
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, image, image_large, target, epoch):
            logits = self.fc(self.conv(image).mean((2, 3)))
            return logits, {"loss_ce": torch.nn.functional.cross_entropy(logits, target)}

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    cfg = get_cfg()
    cfg.TRAIN.COMPILE, cfg.TRAIN.COMPILE_BACKEND = True, "aot_eager"
    torch.manual_seed(0)
    module = Step()
    torch.manual_seed(1 + rank)  # each rank its own images
    image, target = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    expected = module(image, None, target, 1)[1]["loss_ce"].item()
    step = compile_step(cfg, module, functools.partial(DistributedDataParallel, device_ids=None))
    module.zero_grad()
    loss = step(image, None, target, 1)[1]["loss_ce"]
    loss.backward()  # DDP averages the gradients over the ranks
    dist.destroy_process_group()
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"graph_breaks": breaks, "graphs": graphs, "loss": loss.item(), "expected": expected,
                   "grad": module.fc.weight.grad.flatten().tolist()}, f)


def test_a_compiled_ddp_step_is_the_modules_compiled_forward_inside_ddp_without_graph_breaks(tmp_path):
    # Compiling the DDP wrapper itself broke the graph three times in DDP's own forward and made every rank warn.
    torch.multiprocessing.spawn(_compiled_ddp_step_as_rank, args=(str(tmp_path / "store"), str(tmp_path / "out")),
                                nprocs=2)
    seen = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in (0, 1)]
    for rank in (0, 1):
        assert (seen[rank]["graphs"], seen[rank]["graph_breaks"]) == (1, 0), rank  # compiled, and in one piece
        assert seen[rank]["loss"] == pytest.approx(seen[rank]["expected"]), rank
    assert seen[0]["loss"] != seen[1]["loss"] and seen[0]["grad"] == pytest.approx(seen[1]["grad"])


@pytest.mark.parametrize("gpu_id, expected", [([0], 1), ([2, 3], 3)])
def test_each_ddp_process_takes_the_gpu_of_its_rank_on_its_own_node(gpu_id, expected, monkeypatch):
    # Two nodes of 2 processes, 4 GPUs each: rank 3 is the second node's second process (LOCAL_RANK, not RANK). A
    # BASIC.GPU_ID of a GPU per process of the node is kept (it was compared with the whole job's 4 processes and
    # ignored); a shorter one (the default [0]) leaves every GPU to the job.
    from lib.engine import distributed

    for name, value in {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)  # the group itself is not joined here
    cfg = get_cfg()
    cfg.BASIC.DEVICE, cfg.BASIC.GPU_ID = "auto", gpu_id
    info, device = distributed.init_distributed(cfg)
    assert (info.rank, info.local_rank) == (3, 1)
    assert device == torch.device("cuda", expected) and chosen == [device]


@pytest.mark.parametrize("env, message", [
    ({"RANK": "x"}, "the environment variable RANK is 'x', not a number >= 0; torchrun sets RANK, WORLD_SIZE and "
                    "LOCAL_RANK; to train in one process, unset them (unset RANK WORLD_SIZE LOCAL_RANK)"),
    ({"WORLD_SIZE": "0"}, "the environment variable WORLD_SIZE is '0', not a number >= 1;"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "the environment variable RANK is 2, but WORLD_SIZE is 2;"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "29500"},
     "the environment variable WORLD_SIZE is 2, but MASTER_ADDR is not set; start DDP with torchrun, which sets "
     "them all, or unset RANK WORLD_SIZE LOCAL_RANK to train in one process"),
])
def test_stray_torchrun_variables_in_the_environment_are_one_line_not_a_traceback_or_a_hang(env, message,
                                                                                            monkeypatch):
    from lib.engine.distributed import init_distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as err:
        init_distributed(get_cfg())
    assert str(err.value).startswith(message), str(err.value)


def _rank_0_of_2(port: int | None = None) -> dict[str, str]:
    """torchrun's variables for rank 0 of a 2-process job whose store is at 127.0.0.1:`port` (default: a free port,
    so that nothing answers there)."""
    if port is None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    return {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _rendezvous_env(monkeypatch, port: int | None = None) -> int:
    """Set _rank_0_of_2's variables in this process; returns the port."""
    for name, value in _rank_0_of_2(port).items():
        monkeypatch.setenv(name, value)
    return int(os.environ["MASTER_PORT"])


def test_a_process_left_waiting_for_its_ddp_peers_says_so_and_gives_up_with_one_line(monkeypatch, capsys):
    # WORLD_SIZE and MASTER_* left by a cluster's launcher, no torchrun: the one process waited in the rendezvous
    # without a word for torch's 30 minutes, then gave a traceback.
    import datetime

    from lib.engine import distributed

    port = _rendezvous_env(monkeypatch)
    monkeypatch.setattr(distributed, "RENDEZVOUS_NOTICE_S", 0.2)
    monkeypatch.setattr(distributed, "RENDEZVOUS_TIMEOUT", datetime.timedelta(seconds=2))
    # The parent is watched from before the rendezvous: a torchrun agent killed with -9 as its workers started left
    # them waiting on its store for 30 minutes and more (then retrying), 700 MB each.
    calls = []
    monkeypatch.setattr(distributed, "stop_when_parent_dies", lambda: calls.append("watch"))
    join = distributed._join_group
    monkeypatch.setattr(distributed, "_join_group", lambda *args: calls.append("join") or join(*args))
    with pytest.raises(UserError) as err:
        distributed.init_distributed(get_cfg())
    assert calls == ["watch", "join"]
    assert str(err.value).startswith(f"rank 0 of WORLD_SIZE 2 could not join its DDP job at 127.0.0.1:{port} ("), \
        str(err.value)
    assert str(err.value).endswith("); were all 2 processes started? torchrun starts them; to train in one "
                                   "process, unset RANK WORLD_SIZE LOCAL_RANK")
    assert "\n" not in str(err.value)
    assert capsys.readouterr().out == (f"rank 0 of WORLD_SIZE 2 has waited 0 s at 127.0.0.1:{port} for the other "
                                       "processes of its DDP job; were all 2 processes started? torchrun starts "
                                       "them; to train in one process, unset RANK WORLD_SIZE LOCAL_RANK\n")
    assert not torch.distributed.is_initialized()


def test_a_rendezvous_that_fails_otherwise_raises_its_error_and_a_quick_one_says_nothing(monkeypatch, capsys):
    # The join runs in a thread: its error must reach the main thread (swallowed, training went on without a
    # group), and the minute's notice must not fire once the join is done.
    from lib.engine import distributed

    _rendezvous_env(monkeypatch)
    monkeypatch.setattr(distributed, "RENDEZVOUS_NOTICE_S", 0.2)

    def fails(**kwargs):
        raise ValueError("a bad init_method")

    monkeypatch.setattr(torch.distributed, "init_process_group", fails)
    with pytest.raises(ValueError, match="a bad init_method"):
        distributed._join_group("gloo", distributed.dist_info(), torch.device("cpu"))
    joined = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kwargs: joined.append(kwargs["backend"]))
    distributed._join_group("gloo", distributed.dist_info(), torch.device("cpu"))
    time.sleep(0.5)
    assert joined == ["gloo"] and capsys.readouterr().out == ""


def test_automatic_parallel_runs_over_several_gpu_ids_start_the_resource_tracker_quiet(tiny_cub, write_config,
                                                                                       monkeypatch):
    # BASIC.PARALLEL_RUNS 0 trains one run per GPU of GPU_ID: a command that may run in parallel (here on the CPU,
    # one at a time) starts the tracker quiet before anything else can start it.
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 1, "PARALLEL_RUNS": 0, "GPU_ID": [0, 1]},
                           "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    quiet = []
    monkeypatch.setattr(trainer, "start_quiet_resource_tracker", lambda: quiet.append(True))
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert quiet == [True]


def test_bf16_autocast_gives_the_fp32_losses_within_tolerance(tmp_path):
    teacher = tmp_path / "t.pth"
    torch.save({"state_dict": build_model("resnet18", 4, False).state_dict()}, teacher)
    cfg = get_cfg()
    cfg.DATA.DATASET, cfg.DATA.DATADIR, cfg.DATA.NUM_CLASSES = "cub", "unused", 4
    cfg.DATA.CROP_SIZE, cfg.DATA.RESIZE_SIZE, cfg.DATA.LESSEN_RATIO, cfg.FSR.ETA = 64, 72, 2.0, 10.0
    cfg.MODEL.ARCH_T, cfg.MODEL.ARCH_S, cfg.MODEL.MODELDICT_T = "resnet18", "resnet18", str(teacher)
    torch.manual_seed(0)
    distiller = build_distiller(cfg, "isrd").train()
    batch = (torch.randn(8, 3, 32, 32), torch.randn(8, 3, 64, 64), torch.arange(8) % 4, 1)
    state = {k: v.clone() for k, v in distiller.state_dict().items()}
    _, fp32 = distiller.forward_train(*batch)
    distiller.load_state_dict(state)  # BN running statistics moved; start both from the same state
    cfg.TRAIN.AMP = "bf16"
    with autocast(cfg, torch.device("cpu")):
        _, bf16 = distiller.forward_train(*batch)
    assert set(fp32) == set(bf16)
    for name in fp32:
        torch.testing.assert_close(bf16[name].float(), fp32[name], rtol=0.05, atol=0.02, msg=name)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGUSR1, 138)])
def test_a_stop_signal_during_parallel_runs_is_one_line_and_leaves_no_damaged_checkpoint(signum, status, tiny_cub,
                                                                                        write_config, tmp_path):
    # The terminal sends Ctrl-C's SIGINT to the whole process group: this process, the run processes and their loader
    # workers; Slurm sends SIGUSR1 ahead of a time limit (`--signal=USR1@120`) to every process of the job. Sent
    # two seconds after the run processes started: while they load and train.
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 2, "PARALLEL_RUNS": 2, "NUM_WORKERS": 2},
                           "SOLVER": {"NUM_EPOCHS": 200}}, tiny_cub)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, STUDENT), "--config_file", config],
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    exp = tmp_path / "ckpt" / "cub" / "2runs_resnet18_32_seed0_0.01"
    deadline = time.time() + 300
    while not ((exp / "train.log").is_file() and "runs at a time" in (exp / "train.log").read_text()):
        assert time.time() < deadline and proc.poll() is None, "the runs did not start"
        time.sleep(0.1)
    time.sleep(2)
    os.killpg(proc.pid, signum)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == status
    assert err.decode().splitlines() == [INTERRUPTED_MESSAGE], err.decode()
    for last in exp.glob("ckpt/run*/last.pth"):
        assert torch.load(last, weights_only=False)["epoch"] >= 1


def test_a_stop_after_one_run_process_finished_its_runs_ends_the_command_instead_of_hanging(tiny_cub, write_config,
                                                                                              tmp_path):
    # Runs 0 and 2 in one process, run 1 in the other: once run 1 is done its process waits for a task, exits at the
    # first SIGTERM, and the pool then signals the busy one again while it unwinds; that one went back to waiting
    # for a task, and the command waited on it for ever (found by a stress test: 3 hangs in 4 such stops).
    # (Run 2's epochs are the margin: the stop comes while they train. The stop loop itself is the next test's.)
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 3, "PARALLEL_RUNS": 2, "NUM_WORKERS": 0},
                           "SOLVER": {"NUM_EPOCHS": 15}}, tiny_cub)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, STUDENT), "--config_file", config],
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    exp = tmp_path / "ckpt" / "cub" / "3runs_resnet18_32_seed0_0.01"
    try:
        deadline = time.time() + 300
        while not (exp / "ckpt" / "run1" / "result.json").is_file():
            assert time.time() < deadline and proc.poll() is None, "run 1 did not finish"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGUSR1)
        _, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert (proc.returncode, err.decode().splitlines()) == (138, [INTERRUPTED_MESSAGE]), err.decode()
    assert not (exp / "results.json").exists()


_IDLE = """
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from lib.engine import trainer

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=trainer._stop_on_sigterm)
    assert pool.submit(abs, -1).result() == 1  # the run process has done its runs and waits for another task
    (process,) = pool._processes.values()
    # As _train_in_parallel stops every run process when one fails or the command is stopped (a SIGTERM that comes
    # while the process still hands its result over is taken by the pool's own catch-all, and it waits again).
    trainer._stop_run_processes([process])
    pool.shutdown(wait=True, cancel_futures=True)
    print(process.exitcode)  # (after the pool's own thread has reaped it too)
"""


def test_stopping_run_processes_signals_each_at_once_again_every_few_seconds_and_kills_one_that_stays(monkeypatch):
    # One run process exits at the first SIGTERM; another went back to waiting for a task and needs one more (a lost
    # one hung the command); one that never exits is killed rather than waited on for ever.
    clock = [0.0]
    monkeypatch.setattr(trainer, "time", SimpleNamespace(monotonic=lambda: clock[0],
                                                         sleep=lambda s: clock.__setitem__(0, clock[0] + s)))

    class Process:
        def __init__(self, ends_at):
            self.ends_at, self.calls = ends_at, []

        def terminate(self):
            self.calls.append(("terminate", clock[0]))

        def kill(self):
            self.calls.append(("kill", clock[0]))
            self.ends_at = clock[0]

        def is_alive(self):
            assert clock[0] < 3 * trainer._KILL_AFTER_S, "still waiting on a run process that never exits"
            return clock[0] < self.ends_at

    restop, kill_after = trainer._RESTOP_S, trainer._KILL_AFTER_S
    quick, second, stuck = Process(0.0), Process(restop + 2), Process(float("inf"))
    trainer._stop_run_processes([quick, second, stuck])
    assert quick.calls == [("terminate", 0.0)]  # at once, not after the first few seconds
    assert [what for what, _ in second.calls] == ["terminate", "terminate"]
    assert second.calls[0][1] == 0.0 and restop <= second.calls[1][1] < restop + 0.2
    terms = [t for what, t in stuck.calls if what == "terminate"]
    assert terms[0] == 0.0 and all(restop <= b - a < restop + 0.2 for a, b in zip(terms, terms[1:]))
    assert len(terms) == pytest.approx(kill_after / restop, abs=1)
    assert stuck.calls[-1][0] == "kill" and kill_after <= stuck.calls[-1][1] < kill_after + 0.2


def test_a_run_process_stopped_while_it_waits_for_a_run_exits_without_a_traceback(tmp_path):
    # 3 runs on 2 slots: one process finishes its run while the other trains the third, then waits. SIGTERM there
    # came through the pool's own loop: a traceback on the terminal under the command's one line.
    script = tmp_path / "idle.py"
    script.write_text(_IDLE)
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "143\n", "")


# A parallel run process whose parent (the command) is killed with -9: it must stop training and exit, not train
# on into the folder a re-run then trains, nor idle like a pool process waiting for its next task.
_ORPHAN = """
import os, sys, time
from lib.engine import trainer

def train_run(exp, run, device, distiller=None):
    print("training", os.getpid(), flush=True)
    try:
        time.sleep(120)
    finally:  # the run unwinds: its loaders shut down, its last saved epoch stays
        open(sys.argv[1], "w").write("unwound")

trainer._stop_on_sigterm()  # the pool's initializer of every run process
trainer.train_run = train_run
try:
    trainer._parallel_worker(open(sys.argv[2]).read(), "single", sys.argv[3], True, [0], "cpu", 1)
except BaseException:
    time.sleep(120)  # as the pool process would, waiting on its dead parent's queue for the next task
"""
_PARENT = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', *sys.argv[1:]]); import time; "
           "time.sleep(120)")


def test_a_run_process_whose_parent_is_killed_unwinds_and_exits_instead_of_training_on(tiny_cub, write_config,
                                                                                         tmp_path):
    config = write_config(EXTRA, tiny_cub)
    cfg_yaml = tmp_path / "run_cfg.yaml"
    cfg_yaml.write_text(load_config(argparse.Namespace(config_file=config, opts=[])).dump())
    marker = tmp_path / "unwound"
    (tmp_path / "exp").mkdir()
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, _ORPHAN, str(marker), str(cfg_yaml),
                               str(tmp_path / "exp")], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    child = None
    try:
        started, child = parent.stdout.readline().split()
        assert started == "training"
        parent.kill()
        parent.wait()
        deadline = time.time() + 20
        while not process_ended(int(child)):  # (a zombie nobody has reaped yet has ended)
            assert time.time() < deadline, "the orphaned run process is still there"
            time.sleep(0.1)
        assert marker.read_text() == "unwound"
    finally:
        parent.kill()
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)


def test_every_run_gets_the_same_cpu_thread_count_whether_it_trains_beside_others_or_alone(
        tiny_cub, write_config, tmp_path, monkeypatch):
    # A CPU kernel's rounding depends on its thread count: a resume with one run left (trained in this process)
    # must use the thread count the parallel runs used, or it continues with other numbers.
    from lib.engine import trainer

    threads_seen = {}

    def fake_run(exp, run, device, distiller=None):
        threads_seen[run] = torch.get_num_threads()
        row = {"run": run, "seed": run, "best_acc": 50.0, "best_epoch": 1, "last_acc": 50.0}
        os.makedirs(exp.run_dir("ckpt", run), exist_ok=True)
        with open(os.path.join(exp.run_dir("ckpt", run), "result.json"), "w") as f:
            json.dump(row, f)
        return row

    def fake_parallel(exp, pending, devices, threads, said=()):
        assert devices == [torch.device("cpu")] * 2
        default = torch.get_num_threads()
        torch.set_num_threads(threads)  # as each run process does
        try:
            return {run: fake_run(exp, run, devices[0]) for run in pending}
        finally:
            torch.set_num_threads(default)

    monkeypatch.setattr(trainer, "train_run", fake_run)
    monkeypatch.setattr(trainer, "_train_in_parallel", fake_parallel)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)  # 4 usable CPUs
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 2, "PARALLEL_RUNS": 2}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert threads_seen == {0: 2, 1: 2}
    exp = tmp_path / "ckpt" / "cub" / "2runs_resnet18_32_seed0_0.01"
    os.remove(exp / "results.json")
    os.remove(exp / "ckpt" / "run1" / "result.json")  # run 1 was interrupted: it resumes alone
    threads_seen.clear()
    default = torch.get_num_threads()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert threads_seen == {1: 2} and torch.get_num_threads() == default


def test_parallel_runs_on_cuda_go_one_to_each_gpu_of_gpu_id(monkeypatch, tmp_path):
    submitted = []

    class RecordingPool:  # what _train_in_parallel hands each run process, without starting one
        def __init__(self, *args, **kwargs):
            self._processes = {}

        def submit(self, fn, *args):
            submitted.append(args)
            future = concurrent.futures.Future()
            future.set_result({})
            return future

        def shutdown(self, *args, **kwargs):
            pass

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", RecordingPool)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cfg = get_cfg()
    cfg.BASIC.GPU_ID = [2, 3]
    exp = trainer.Experiment(cfg, "single", str(tmp_path), True, None, None)
    devices = slot_devices(cfg, torch.device("cuda", 2), 2)
    assert devices == [torch.device("cuda", 2), torch.device("cuda", 3)]
    trainer._train_in_parallel(exp, [0, 1, 2], devices, 0)
    # (cfg yaml, method, exp_dir, multi_run, runs, device, threads) of each process.
    assert [(args[4], args[5]) for args in submitted] == [([0, 2], "cuda:2"), ([1], "cuda:3")]


@pytest.mark.parametrize("parallel", [1, 2])
def test_only_a_process_that_trains_takes_its_device_and_checks_the_cache_fits_there(
        parallel, tiny_cub, write_config, monkeypatch):
    # On CUDA 12 taking a device makes a context there: a main process that only waits for its run processes stays
    # off the GPUs (one of them trains on GPU_ID[0], which in exclusive-process mode takes one process only).
    taken, checked = [], []
    monkeypatch.setattr(trainer, "use_device", taken.append)
    monkeypatch.setattr(trainer, "check_cache_fits", lambda dataset, device, free=True: checked.append((device, free)))
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 2, "PARALLEL_RUNS": parallel},
                           "DATA": {**EXTRA["DATA"], "PIPELINE": "device"}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    cpu = torch.device("cpu")
    # The main process of parallel runs checks the cache against each GPU's whole memory, before writing anything.
    assert (taken, checked) == (([cpu], [(cpu, True)]) if parallel == 1 else ([], [(cpu, False)]))


def test_a_run_process_takes_its_own_device_and_checks_the_cache_fits_there(tiny_cub, monkeypatch, tmp_path):
    taken, checked = [], []
    monkeypatch.setattr(trainer, "use_device", taken.append)
    monkeypatch.setattr(trainer, "check_cache_fits", lambda dataset, device, free=True: checked.append((device, free)))
    cfg = get_cfg()
    cfg.DATA.DATASET, cfg.DATA.DATADIR, cfg.DATA.NUM_CLASSES, cfg.DATA.PIPELINE = "cub", tiny_cub, 4, "device"
    cfg.DATA.RESIZE_SIZE, cfg.DATA.CROP_SIZE = 36, 32
    assert trainer._parallel_worker(cfg.dump(), "single", str(tmp_path), True, [], "cpu", 0) == {}
    assert taken == [torch.device("cpu")] and checked == [(torch.device("cpu"), True)]


def test_no_more_runs_at_once_than_runs_left():
    cfg = get_cfg()
    cfg.BASIC.GPU_ID = [0, 1, 2, 3, 4]
    assert parallel_slots(cfg, torch.device("cuda", 0), 5) == 5
    assert parallel_slots(cfg, torch.device("cuda", 0), 2) == 2  # a resume with two runs left
    cfg.BASIC.PARALLEL_RUNS = 3
    assert parallel_slots(cfg, torch.device("cpu"), 1) == 1


def test_on_the_cpu_runs_go_one_at_a_time_whatever_gpu_id_lists():
    # BASIC.PARALLEL_RUNS 0 is "one per GPU listed in GPU_ID on CUDA, one at a time on the CPU" (defaults.py).
    cfg = get_cfg()
    cfg.BASIC.GPU_ID = [0, 1, 2, 3, 4]
    assert parallel_slots(cfg, torch.device("cpu"), 5) == 1


def _record_runs(cfg_yaml, method, exp_dir, multi_run, runs, device, threads, said=()):
    """A run process's work that records the runs it was given and trains none (spawned: importable by name)."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="given_", suffix=".json", dir=exp_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(runs, f)
    return {run: {"run": run, "seed": run, "best_acc": 1.0, "best_epoch": 1, "last_acc": 1.0} for run in runs}


def test_each_pending_run_is_given_to_exactly_one_run_process(tiny_cub, write_config, tmp_path, monkeypatch):
    # Two run processes training the same run would write into the same run folder at once.
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 3, "PARALLEL_RUNS": 2}}, tiny_cub)
    monkeypatch.setattr(trainer, "_parallel_worker", _record_runs)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "3runs_resnet18_32_seed0_0.01"
    assert sorted(json.loads(p.read_text()) for p in exp.glob("given_*.json")) == [[0, 2], [1]]


def test_the_main_process_of_parallel_runs_frees_its_checked_images_before_the_run_processes_decode_theirs(
        tiny_cub, write_config, tmp_path, monkeypatch):
    # It held one more copy of the decoded dataset (gigabytes for CUB at 224 px) while the runs trained.
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 2, "PARALLEL_RUNS": 2}}, tiny_cub)
    seen = []

    def train_in_parallel(exp, pending, devices, threads, said=()):
        seen.append([(split.cache, split.released) for split in (exp.train_set, exp.test_set)])
        with pytest.raises(RuntimeError, match="released"):
            exp.train_set[0]
        return {run: {"run": run, "seed": run, "best_acc": 1.0, "best_epoch": 1, "last_acc": 1.0} for run in pending}

    monkeypatch.setattr(trainer, "_train_in_parallel", train_in_parallel)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert seen == [[(None, True), (None, True)]]


def test_a_process_waiting_for_its_ddp_peers_stops_at_once_on_sigterm_with_one_line(tiny_cub, write_config, tmp_path):
    # init_process_group blocks in C++ for its 30 minutes: in the main thread, no signal handler ran meanwhile, and
    # Ctrl-C or a job's SIGTERM left the process waiting until kill -9.
    import socket

    job = _rank_0_of_2()
    port = int(job["MASTER_PORT"])
    config = write_config({**EXTRA, "BASIC": {"DEVICE": "cpu", "NUM_RUNS": 1}}, tiny_cub)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **job)
    proc = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, STUDENT), "--config_file", config],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # rank 0 serves the job's store: it waits there
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, out + err
    assert err.splitlines() == [INTERRUPTED_MESSAGE], err
    assert not (tmp_path / "ckpt").exists()
