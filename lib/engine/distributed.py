"""Several processes: DDP for one run (launched by torchrun) and independent runs spread over GPUs.

DDP: `torchrun --nproc_per_node N tools_1_ts/train_isrd_5runs.py --config_file ...` trains each run with N
processes (one GPU each, or the CPU with gloo); TRAIN.BATCH_SIZE is per process; rank 0 alone writes files.
Runs over GPUs: BASIC.GPU_ID [0, 1, 2, 3, 4] (or BASIC.PARALLEL_RUNS N) trains the independent runs of an
experiment at the same time, one process per GPU, gathered into the same results.json.
"""

from __future__ import annotations

import atexit
import datetime
import os
import signal
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from yacs.config import CfgNode

from lib.utils.errors import TERMINATED_EXIT, UserError, first_line
from lib.utils.log import get_logger
from lib.utils.processes import usable_cpus, watch_parent


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file and log line."""
        return self.rank == 0


# How long a process waits for the others of its DDP job before it says so (they may be starting on other nodes),
# and before it gives up (None: torch's default, 30 minutes).
RENDEZVOUS_NOTICE_S = 60.0
RENDEZVOUS_TIMEOUT: datetime.timedelta | None = None

_UNSET_HINT = ("torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; to train in one process, unset them "
               "(unset RANK WORLD_SIZE LOCAL_RANK)")


def _env_number(name: str, default: int, least: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise UserError(f"the environment variable {name} is {text!r}, not a number >= {least}; {_UNSET_HINT}")
    return value


def dist_info() -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (a stray value is a UserError)."""
    info = DistInfo(_env_number("RANK", 0, 0), _env_number("WORLD_SIZE", 1, 1), _env_number("LOCAL_RANK", 0, 0))
    if info.rank >= info.world_size:
        raise UserError(f"the environment variable RANK is {info.rank}, but WORLD_SIZE is {info.world_size}; "
                        f"{_UNSET_HINT}")
    return info


def init_distributed(cfg: CfgNode) -> tuple[DistInfo, torch.device | None]:
    """Join the torchrun process group (nccl on CUDA, gloo on the CPU); returns the info and this rank's device."""
    info = dist_info()
    if not info.enabled:
        return info, None
    use_cuda = torch.cuda.is_available() and cfg.BASIC.DEVICE != "cpu"
    if use_cuda:
        # BASIC.GPU_ID names this node's GPUs for its processes (torchrun's LOCAL_WORLD_SIZE, --nproc_per_node), so
        # that a job over several nodes keeps it; a shorter list (the default [0]) leaves every GPU to the job.
        per_node = _env_number("LOCAL_WORLD_SIZE", info.world_size, 1)
        gpus = list(cfg.BASIC.GPU_ID) if len(cfg.BASIC.GPU_ID) >= per_node else list(
            range(torch.cuda.device_count()))
        if info.local_rank >= len(gpus):
            raise UserError(f"torchrun started {per_node} processes per node but only {len(gpus)} GPUs "
                            "are available; lower --nproc_per_node")
        device = torch.device("cuda", gpus[info.local_rank])
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise UserError(f"the environment variable WORLD_SIZE is {info.world_size}, but {' and '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} not set; start DDP with torchrun, which sets "
                            "them all, or unset RANK WORLD_SIZE LOCAL_RANK to train in one process")
        # torchrun's agent killed with -9 leaves its workers running otherwise; watched from before the rendezvous,
        # where a worker whose agent died waits on the agent's store (30 minutes, then retries).
        stop_when_parent_dies()
        _join_group("nccl" if use_cuda else "gloo", info, device)
        atexit.register(_leave_group)  # NCCL warns at exit about a process group never destroyed
    return info, device


def _join_group(backend: str, info: DistInfo, device: torch.device) -> None:
    """init_process_group, saying so when the other processes keep it waiting, and one line if they never come.

    Without torchrun, variables that a cluster's launcher left in the environment (WORLD_SIZE, MASTER_ADDR, ...)
    make a single process wait there for peers that will never start. It waits in a thread: Python runs signal
    handlers in the main thread only, between bytecodes, and init_process_group blocks in C++ until its timeout
    (30 minutes), so Ctrl-C and SIGTERM did nothing while the main thread waited there itself.
    """
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    job = f"rank {info.rank} of WORLD_SIZE {info.world_size}"
    hint = (f"were all {info.world_size} processes started? torchrun starts them; to train in one process, unset "
            "RANK WORLD_SIZE LOCAL_RANK")
    notice = threading.Timer(RENDEZVOUS_NOTICE_S, lambda: get_logger().warning(
        f"{job} has waited {RENDEZVOUS_NOTICE_S:.0f} s at {where} for the other processes of its DDP job; {hint}"))
    notice.daemon = True
    failed: list[BaseException] = []

    def join() -> None:
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device)  # the current device is the calling thread's
            dist.init_process_group(backend=backend, timeout=RENDEZVOUS_TIMEOUT)
        except BaseException as err:  # raised again in the main thread
            failed.append(err)

    joiner = threading.Thread(target=join, name="ddp-rendezvous", daemon=True)
    notice.start()
    joiner.start()
    try:
        while joiner.is_alive():
            joiner.join(0.5)  # a signal's handler runs here, and its exception ends the wait
    finally:
        notice.cancel()
    if failed and isinstance(failed[0], dist.DistError):
        raise UserError(f"{job} could not join its DDP job at {where} ({first_line(failed[0])}); {hint}") from None
    if failed:
        raise failed[0]


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Each of `values` summed over the ranks of the DDP job (one all_reduce); `values` as they are without one."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    summed = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return summed.tolist()


_watched_parent: int | None = None


def parent_died() -> bool:
    """Whether the parent that stop_when_parent_dies watches is gone."""
    return _watched_parent is not None and os.getppid() != _watched_parent


def stop_when_parent_dies(poll_s: float = 1.0, grace_s: float = 60.0) -> None:
    """SIGTERM this process as soon as its parent is gone (a parent killed with -9 cannot stop it).

    For the processes of one experiment that another started: a parallel run process, a torchrun worker. Left
    running, an orphan would go on training into the folder that a re-run of the command then trains too. SIGTERM
    unwinds the run like Ctrl-C (its last saved epoch kept); a process still there `grace_s` later (one blocked
    in a collective with a peer that is gone) exits.
    """
    global _watched_parent

    def stop() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(TERMINATED_EXIT)

    _watched_parent = watch_parent(stop, poll_s=poll_s)


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def run_threads(cfg: CfgNode, device: torch.device, num_runs: int) -> int:
    """CPU threads of each run of an experiment whose runs share the CPU; 0 = torch's default (one run at a time).

    Every run of the experiment gets the same count, whether it trains beside others or alone (a resume with
    one run left): a CPU kernel's floating-point rounding depends on its thread count.
    """
    slots = parallel_slots(cfg, device, num_runs)
    return max(1, usable_cpus() // slots) if device.type == "cpu" and slots > 1 else 0


def parallel_slots(cfg: CfgNode, device: torch.device, pending: int) -> int:
    """How many runs to train at once: BASIC.PARALLEL_RUNS, or (0 = auto) one per GPU of GPU_ID on CUDA."""
    slots = cfg.BASIC.PARALLEL_RUNS
    if slots == 0:
        slots = len(cfg.BASIC.GPU_ID) if device.type == "cuda" else 1
    return max(1, min(slots, pending))
