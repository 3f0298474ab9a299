"""lib/utils/processes.py: a process that started another is watched, and its end noticed, however it ends."""

import functools
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
from torch.utils.data import DataLoader

from lib.config import REPO_ROOT
from lib.utils import processes
from lib.utils.errors import signal_safe_iter
from lib.utils.processes import STOP_SIGNALS, exit_with_parent, forks_workers_that_ignore_stops, watch_parent


def test_the_end_of_a_watched_process_that_is_not_this_ones_parent_is_noticed_before_it_is_reaped():
    # Loader workers started through a go-between (the forkserver start method) have it, not the process that
    # iterates their loader, as parent; that process, killed, is a zombie until its own parent reaps it.
    watched = subprocess.Popen(["sleep", "60"])
    ended = threading.Event()
    try:
        assert watch_parent(ended.set, parent=watched.pid, poll_s=0.05) == watched.pid
        assert not ended.wait(0.5)
        watched.kill()  # not reaped (no wait() yet): a zombie
        assert ended.wait(5)
    finally:
        watched.kill()
        watched.wait()


# A loader still referenced when the interpreter exits, as the traceback of an error raised inside the training
# loop keeps it: its workers ignore SIGTERM, which multiprocessing's exit handler sends them before waiting.
_EXIT_WITH_A_LIVE_LOADER = """
import torch
from lib.config import get_cfg
from lib.engine.trainer import build_loader
class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 64
    def __getitem__(self, item):
        return 0
cfg = get_cfg()
cfg.BASIC.NUM_WORKERS = 2
loader = build_loader(cfg, Items(), False, torch.device("cpu"))
batches = iter(loader)
next(batches)
print("exiting", flush=True)
"""


def test_a_process_exits_at_once_with_a_loader_still_referenced_and_says_nothing_of_its_workers():
    proc = subprocess.Popen([sys.executable, "-c", _EXIT_WITH_A_LIVE_LOADER], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)  # it waited for ever
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert (proc.returncode, out, err) == (0, "exiting\n", "")


def test_a_one_line_error_on_a_closed_stderr_pipe_still_exits_with_its_status():
    # `... 2>&1 | head -c 100` ended before the error line: printing it failed, and the failure escaped.
    code = ("import sys\nfrom lib.utils.errors import UserError, cli_main\n"
            "@cli_main\ndef main():\n    raise UserError('x' * 100)\n"
            "main()\n")
    read, write = os.pipe()
    os.close(read)
    proc = subprocess.run([sys.executable, "-c", code], stdout=write, stderr=write, timeout=60)
    os.close(write)
    assert proc.returncode == 2


def _raised_in(filename: str, error: BaseException):
    """(type, error, traceback) of `error` raised by code that says it lives in `filename`."""
    try:
        exec(compile("raise error", filename, "exec"), {"error": error})
    except BaseException as caught:  # the one raised above
        return type(caught), caught, caught.__traceback__


def test_a_loader_worker_is_silent_on_a_batch_hand_over_that_its_stopping_parent_broke_off_and_on_nothing_else():
    from lib.utils.processes import _quiet_about_hand_overs_broken_off

    reported = []
    hook = functools.partial(_quiet_about_hand_overs_broken_off, lambda *exc: reported.append(exc[0]))
    hook(*_raised_in("/usr/lib/python3/multiprocessing/resource_sharer.py", ConnectionResetError(104, "reset")))
    assert reported == []
    hook(*_raised_in("/usr/lib/python3/multiprocessing/resource_sharer.py", ValueError("a bug")))
    hook(*_raised_in("/work/lib/datasets/cub.py", ConnectionResetError(104, "reset")))
    assert reported == [ValueError, ConnectionResetError]


class _WorkersExceptHook(torch.utils.data.Dataset):
    """One item: whether the process that reads it has the quiet excepthook as sys.excepthook."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> bool:
        return getattr(sys.excepthook, "func", None) is processes._quiet_about_hand_overs_broken_off


def test_a_loader_worker_started_with_exit_with_parent_has_the_quiet_excepthook_and_its_parent_keeps_its_own():
    loader = DataLoader(_WorkersExceptHook(), batch_size=None, num_workers=1, multiprocessing_context="fork",
                        worker_init_fn=functools.partial(processes.exit_with_parent, os.getpid()))
    assert list(signal_safe_iter(loader)) == [True]
    assert getattr(sys.excepthook, "func", None) is not processes._quiet_about_hand_overs_broken_off


def test_usable_cpus_are_those_of_the_process_affinity_not_the_machines(monkeypatch):
    # A scheduler's cpuset (or taskset) gives the job fewer CPUs than the machine has: loader workers and run threads
    # beyond them only contend (and torch's DataLoader warns about each worker too many).
    from lib.utils import processes

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5}, raising=False)
    assert processes.usable_cpus() == 2
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS has none: the machine's count
    assert processes.usable_cpus() == 64


def test_stop_signals_that_reach_a_loader_worker_as_it_starts_are_dropped_not_its_death(monkeypatch):
    # The job's stop signals reach the worker before its init has ignored them, with torch's own SIGTERM handler
    # already in place: torchrun's agent, Slurm and `timeout` signal every process of the job, a worker as it starts.
    # The worker died of them, and the parent, stopping for the same signal, printed torch's "DataLoader worker ...
    # is killed by signal" lines after its own.
    def signalled_as_it_starts(parent: int, worker_id: int) -> None:
        for s in (signal.SIGTERM, signal.SIGINT, *STOP_SIGNALS):  # a Ctrl-C's SIGINT reaches the group too
            os.kill(os.getpid(), s)
        exit_with_parent(parent, worker_id)

    monkeypatch.setattr(processes, "exit_with_parent", signalled_as_it_starts)
    loader = DataLoader(torch.arange(8), batch_size=2, num_workers=2, multiprocessing_context="fork",
                        worker_init_fn=functools.partial(processes.exit_with_parent, os.getpid()))
    assert [batch.tolist() for batch in signal_safe_iter(loader)] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_only_loaders_whose_forked_workers_unblock_the_stop_signals_start_them_blocked():
    # A worker that never unblocks them (another init) would ignore its loader's terminate() for good; one spawned,
    # or forked by a server started inside the block, is no copy of the blocked thread.
    init = functools.partial(exit_with_parent, os.getpid())
    data = torch.arange(4)
    assert forks_workers_that_ignore_stops(DataLoader(data, num_workers=1, worker_init_fn=init,
                                                      multiprocessing_context="fork"))
    assert not forks_workers_that_ignore_stops(DataLoader(data, num_workers=1, worker_init_fn=init,
                                                          multiprocessing_context="spawn"))
    assert not forks_workers_that_ignore_stops(DataLoader(data, num_workers=1, worker_init_fn=print,
                                                          multiprocessing_context="fork"))
    assert not forks_workers_that_ignore_stops(DataLoader(data, num_workers=0, worker_init_fn=init))
    assert not forks_workers_that_ignore_stops(range(4))


def test_freed_memory_is_handed_back_through_glibcs_malloc_trim_and_nothing_happens_without_it(monkeypatch):
    import ctypes
    from types import SimpleNamespace

    calls = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: SimpleNamespace(malloc_trim=calls.append))
    processes.return_freed_memory()
    assert calls == [0]  # keep no free heap

    def no_trim(name):
        raise AttributeError("malloc_trim")  # macOS, musl

    monkeypatch.setattr(ctypes, "CDLL", no_trim)
    processes.return_freed_memory()


# A process that made a semaphore the resource tracker knows of, and ended without unlinking it (killed outright).
_SEMAPHORE_LEFT = """
import multiprocessing, os, sys
from lib.utils.processes import start_quiet_resource_tracker
if sys.argv[1] == "quiet":
    start_quiet_resource_tracker()
lock = multiprocessing.get_context("spawn").Lock()
print(lock._semlock.name, flush=True)
if sys.argv[1] == "quiet":  # the job's stop signals reach the tracker too
    import signal, time
    from multiprocessing import resource_tracker
    for s in (signal.SIGHUP, signal.SIGUSR1):
        os.kill(resource_tracker._resource_tracker._pid, s)
    time.sleep(0.5)
    assert os.waitpid(resource_tracker._resource_tracker._pid, os.WNOHANG) == (0, 0), "the tracker died"
os._exit(0)
"""


@pytest.mark.parametrize("quiet", [True, False])
def test_the_resource_tracker_unlinks_what_a_killed_process_left_and_warns_only_when_not_started_quiet(quiet):
    # (Not quiet: the tracker's warning, two lines after a command's one line when a run process was killed.)
    proc = subprocess.run([sys.executable, "-c", _SEMAPHORE_LEFT, "quiet" if quiet else "loud"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)  # waits for the tracker: it shares stderr
    name = proc.stdout.strip()
    assert name and not os.path.exists(f"/dev/shm/sem.{name.lstrip('/')}")  # unlinked by the tracker
    assert ("leaked semaphore objects" in proc.stderr) != quiet, proc.stderr
    assert proc.stderr == "" or not quiet
