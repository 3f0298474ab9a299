"""Processes that must not outlive the process that started them."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType

__all__ = ["watch_parent", "exit_with_parent", "reap_loader_workers_at_exit", "process_ended", "usable_cpus",
           "LOADER_START_METHOD", "STOP_SIGNALS", "stop_signals_blocked", "forks_workers_that_ignore_stops",
           "return_freed_memory", "signals_ignored", "start_quiet_resource_tracker"]

# The signals that stop a run as SIGTERM does, besides it and Ctrl-C: a closed terminal's SIGHUP (an ssh session
# dropped: POSIX sends it to the terminal's whole foreground process group), and SIGUSR1, which Slurm sends ahead of a
# job's time limit to the job's srun steps when the job asks for it (`#SBATCH --signal=USR1@120`) and whose default
# action would end the run without a word. Windows has neither.
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(getattr(signal, name) for name in ("SIGHUP", "SIGUSR1")
                                                 if hasattr(signal, name))

# How loader workers start: fork on Linux, whatever Python's default (3.14 made it forkserver there). A forked
# worker shares the decoded-image cache with the process that made it, page for page; a forkserver or spawned one
# would get the cache pickled to it (gigabytes, a shared-memory file per image). Elsewhere, Python's default.
LOADER_START_METHOD: str | None = "fork" if sys.platform.startswith("linux") else None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a scheduler's cpuset, `taskset`), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity to read (macOS, Windows)
        return os.cpu_count() or 1


def start_quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker for this process and the ones it spawns, unless it runs already,
    with its warnings off (start it before anything else does).

    A run process killed outright (the out-of-memory killer, kill -9) cannot unlink the semaphores it made (tqdm's
    lock among them); the tracker unlinks them as the command ends, and warned of "leaked semaphore objects" on the
    job's stderr, two lines after the command's one. The tracker is a separate interpreter that takes this one's -W
    options; the option silences every warning of its own ("resource_tracker: ..."), which all are of that kind:
    leftovers it cleans up, or one it could not.

    It starts with the job's other stop signals (SIGHUP, SIGUSR1) ignored, as the run processes do: they reach every
    process of the job, and the tracker, which ignores only SIGINT and SIGTERM itself, died of them (its "process
    died unexpectedly, relaunching" warnings and a KeyError traceback per semaphore on the job's stderr).
    """
    from multiprocessing import resource_tracker

    option = "ignore:resource_tracker:UserWarning"
    sys.warnoptions.append(option)
    try:
        with signals_ignored(STOP_SIGNALS):
            resource_tracker.ensure_running()
    finally:
        sys.warnoptions.remove(option)


@contextlib.contextmanager
def signals_ignored(signals: Iterable[int]) -> Iterator[None]:
    """Ignore `signals` in this process for the block (from the main thread; elsewhere nothing): a process started
    meanwhile keeps them ignored, across its fork and exec, until it sets handlers of its own."""
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals} if main else {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def return_freed_memory() -> None:
    """Give the memory this process has freed back to the system, where the C library keeps it for reuse (glibc's
    malloc_trim: the thousands of images of a freed decoded-image cache stayed in this process's heap). Elsewhere,
    nothing."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc (macOS, musl), or no C library to load
        return
    trim(0)


def process_ended(pid: int) -> bool:
    """Whether process `pid` has ended; a killed process that nobody has reaped yet (a zombie) has."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False  # no /proc (not Linux): running, as far as can be told


def watch_parent(on_death: Callable[[], None], parent: int | None = None, poll_s: float = 1.0) -> int:
    """Call `on_death` from a daemon thread once `parent` (default: this process's parent now) has ended.

    A thread works whatever the main thread is blocked in, and whichever thread of the parent started this process
    (prctl's PR_SET_PDEATHSIG follows the thread). Returns the watched pid.
    """
    parent = os.getppid() if parent is None else parent
    # Started by `parent` itself (fork, spawn): it has ended once this process is another's child. Started through
    # a go-between (the forkserver start method, Python 3.14's default on Linux): ask the system.
    direct = os.getppid() == parent

    def watch() -> None:
        while (os.getppid() == parent) if direct else not process_ended(parent):
            time.sleep(poll_s)
        on_death()

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
    return parent


def exit_with_parent(parent: int, worker_id: int | None = None) -> None:
    """Make this loader worker exit at once when `parent`, the process that iterates its loader, has ended.

    functools.partial(exit_with_parent, os.getpid()) is a DataLoader worker_init_fn. torch's own worker notices a
    dead parent only to block for ever on its loader's "done" event when the parent was killed (with -9, say)
    while it held that event's lock: the worker, and the memory it holds, stayed.

    The worker also ignores SIGTERM (and SIGINT, SIGHUP, SIGUSR1): `timeout`, Slurm's preemption and systemd send it
    to every process of the job, and a worker dead of it made the parent, unwinding from its own SIGTERM, print torch's
    "DataLoader worker is killed by signal" traceback. The parent stops its workers on its way out; if it dies, the
    watch above does. Nor does the worker print the traceback of a batch hand-over that the parent broke off on its
    way out.
    """
    for s in _WORKER_IGNORES:
        signal.signal(s, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked as it was forked (stop_signals_blocked): what came is dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_IGNORES)
    sys.excepthook = functools.partial(_quiet_about_hand_overs_broken_off, sys.excepthook)
    watch_parent(functools.partial(_exit_for_a_dead_parent, _multiprocessing_temp_dir()), parent)


def _multiprocessing_temp_dir() -> str | None:
    """The /tmp/pymp-* folder multiprocessing made for this process (where a loader worker's sockets for handing
    batches over live), or the one it inherited from its parent; None before there is one."""
    import multiprocessing

    return getattr(multiprocessing.current_process(), "_config", {}).get("tempdir")


def _exit_for_a_dead_parent(inherited: str | None) -> None:
    """os._exit(1), after removing the multiprocessing folder this worker made itself: os._exit skips the exit
    handler that removes it, and every loader worker of a run killed with -9 left its /tmp/pymp-* folder."""
    made = _multiprocessing_temp_dir()
    if made is not None and made != inherited:  # an inherited one is the parent's (and its other workers')
        shutil.rmtree(made, ignore_errors=True)
    os._exit(1)


# The signals a loader worker ignores (its parent stops it), and that stay blocked from its fork until it does.
# SIGINT too: a terminal's Ctrl-C reaches the whole group (torchrun's agent sends it on to each worker's group), and
# workers that it ended before their parent had taken its own made the parent's loader fail ("DataLoader worker
# exited unexpectedly", a batch's file gone from resource_sharer) in a traceback instead of the interrupted line.
_WORKER_IGNORES = (signal.SIGTERM, signal.SIGINT, *STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_blocked(block: bool = True):
    """Block SIGTERM, SIGHUP and SIGUSR1 in this thread for the block (if `block`): around the start of a loader
    whose workers are forked and begin with exit_with_parent (forks_workers_that_ignore_stops).

    A worker is forked with its parent's handlers, and torch's worker then installs its own SIGTERM handler, which
    dies of a SIGTERM that its parent did not send: a job's SIGTERM (torchrun's agent signals each worker's whole
    process group, as Slurm and `timeout` do) that came before exit_with_parent ignored it killed the worker, and
    the parent printed torch's "DataLoader worker ... is killed by signal" lines after its own. Forked with the
    signals blocked, the worker holds them until exit_with_parent ignores them and unblocks. Signals sent meanwhile
    to this process go to its other threads, or wait until the block ends.
    """
    if not block or not hasattr(signal, "pthread_sigmask"):  # Windows: no fork, no such signals
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_IGNORES)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def forks_workers_that_ignore_stops(loader: object) -> bool:
    """Whether `loader` (a DataLoader) forks its workers and starts each with exit_with_parent: only those unblock
    what stop_signals_blocked holds for them. (A worker of another start method is no copy of this thread: spawned
    or forked by a server started inside the block, it would keep the signals blocked for good; so would one whose
    init does not unblock them.)"""
    init = getattr(loader, "worker_init_fn", None)
    context = getattr(loader, "multiprocessing_context", None)
    return (getattr(loader, "num_workers", 0) > 0 and isinstance(init, functools.partial)
            and init.func is exit_with_parent and context is not None and context.get_start_method() == "fork")


def _quiet_about_hand_overs_broken_off(hook: Callable, exc_type: type, exc: BaseException, tb: TracebackType | None
                                       ) -> None:
    """sys.excepthook of a loader worker: silent on the connection errors of multiprocessing's resource sharer.

    A worker hands each batch's shared memory to the parent as a file descriptor, served by a thread of the
    worker (multiprocessing.resource_sharer), which reports its errors through sys.excepthook. A parent stopped by
    a signal in the middle of taking one resets the connection: the worker printed "ConnectionResetError" in a
    traceback into the job's stderr, after the parent's one line. Everything else goes to `hook`.
    """
    import multiprocessing

    files = []
    frame = tb
    while frame is not None:
        files.append(frame.tb_frame.f_code.co_filename)
        frame = frame.tb_next
    broken_off = issubclass(exc_type, (OSError, EOFError, multiprocessing.AuthenticationError))
    if broken_off and any(name.endswith("resource_sharer.py") for name in files):
        return
    hook(exc_type, exc, tb)


_reaper_registered = False


def reap_loader_workers_at_exit() -> None:
    """Kill this process's daemonic children (its loader workers) when it exits; call it where loaders are made.

    The workers ignore SIGTERM (exit_with_parent), and multiprocessing's exit handler stops daemonic children with
    SIGTERM, then waits for them without a time limit: a loader still referenced when the interpreter exits (by
    the traceback of an error raised inside the training loop) kept the process waiting for ever. atexit runs the
    handler registered last first, so this one runs before multiprocessing's, which then finds them gone.
    """
    global _reaper_registered
    if not _reaper_registered:
        atexit.register(_kill_daemonic_children)
        _reaper_registered = True


def _kill_daemonic_children() -> None:
    import multiprocessing

    # torch's SIGCHLD handler would report each killed worker as a failure ("DataLoader worker is killed by
    # signal"), in a traceback, on the way out.
    if hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
