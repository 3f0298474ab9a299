"""User-facing errors: one clear line and a non-zero exit instead of a traceback."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import functools
import os
import re
import select
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from typing import NoReturn, TypeVar

from lib.utils.files import run_folders
from lib.utils.processes import STOP_SIGNALS, forks_workers_that_ignore_stops, stop_signals_blocked

T = TypeVar("T")

# Exit status for a mistake the user can fix (bad config, missing file, ...). argparse uses 2 as well.
USER_ERROR_EXIT = 2
# Exit status after Ctrl-C: 128 + SIGINT, what a shell reports for a process killed by it.
INTERRUPTED_EXIT = 130
# Exit status after SIGTERM (a scheduler preempting the job, `kill <pid>`): 128 + SIGTERM.
TERMINATED_EXIT = 143
# Exit status after SIGHUP (the terminal closed: an ssh session dropped without nohup or tmux): 128 + SIGHUP.
HUNG_UP_EXIT = 129
# Exit status after SIGUSR1 (Slurm's warning ahead of a job's time limit, `--signal=USR1@120`): 128 + SIGUSR1.
SIGNALLED_EXIT = 128 + getattr(signal, "SIGUSR1", 10)
# Exit status when standard output's reader has gone (`... | head`): 128 + SIGPIPE, as for `cat` in that pipe.
CLOSED_PIPE_EXIT = 141
INTERRUPTED_MESSAGE = "interrupted; re-run the same command to resume (training goes on from its last saved epoch)"
FRESH_START_INTERRUPTED_MESSAGE = ("interrupted; re-run the same command without BASIC.FRESH_START True to resume "
                                   "(training goes on from its last saved epoch)")
TOOL_INTERRUPTED_MESSAGE = "interrupted"
# What to change when a GPU runs out of memory: the training scripts' and tools/benchmark.py's keys (tools/eval.py
# and tools/cost.py name their own).
TRAINING_MEMORY_HINT = ("use a smaller TRAIN.BATCH_SIZE or TEST.BATCH_SIZE, or mixed precision (TRAIN.AMP bf16 or "
                        "fp16), or free the GPU of other processes")

# Writing into a read-only, forbidden or full folder: the user picks another folder, it is not a bug.
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FILE_IN_THE_WAY = {errno.EEXIST, errno.ENOTDIR}
_WHERE_OUTPUTS_GO = ("BASIC.OUTPUT_ROOT for training and tools/benchmark.py, --out for tools/cost.py and "
                     "tools/summarize.py, and for tools/eval.py, which writes beside TEST.CHECKPOINT without it")


# What torch puts into the message of an exception that it re-raises from a DataLoader worker, before the
# worker's traceback.
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


class UserError(Exception):
    """A mistake in the user's input; its message is shown as one line, without a traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where a Ctrl-C would be, so that a run unwinds the same way (its last saved epoch kept)."""

    exit_status = TERMINATED_EXIT


class HungUp(Terminated):
    """SIGHUP (the terminal closed), raised and unwound as SIGTERM is; train.log says the run was interrupted."""

    exit_status = HUNG_UP_EXIT


class Signalled(Terminated):
    """SIGUSR1 (Slurm's warning ahead of a job's time limit), raised and unwound as SIGTERM is."""

    exit_status = SIGNALLED_EXIT


# Ctrl-C and SIGTERM raise where the main thread happens to be. Inside library code that takes a lock (a
# multiprocessing queue's, as a DataLoader hands indices to its workers) the exception can land between the lock's
# acquire and the `with` that releases it: the lock stays held, and the loader's shutdown then waits on it for ever
# (the process printed its "interrupted" line and never exited). Code that calls into such libraries holds the
# signals back (`interrupts_held`, `signal_safe_iter`) and raises them where it is safe.
_INTERRUPTS = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated,
               **{s: HungUp if s.name == "SIGHUP" else Signalled for s in STOP_SIGNALS}}
# The main thread's nesting of interrupts_held blocks, the signal held in them and when it came.
_hold = {"depth": 0, "received": [], "since": 0.0}
# A second signal this soon after the held one is the same stop sent again, not a user insisting: torchrun's agent
# passes the group's Ctrl-C or SIGTERM on to its workers, a PARALLEL_RUNS parent stops its run processes.
_SAME_STOP_S = 2.0


def raise_terminated(signum, frame) -> None:
    """The SIGTERM handler of the scripts and the run processes: raise Terminated in the main thread (at the end
    of an `interrupts_held` block when inside one)."""
    _interrupt(signum)


def raise_interrupted(signum, frame) -> None:
    """The SIGINT (Ctrl-C) handler of the scripts: raise KeyboardInterrupt, held back like raise_terminated."""
    _interrupt(signum)


def _interrupt(signum: int) -> None:
    if _hold["depth"]:
        now = time.monotonic()
        if not _hold["received"]:
            _hold["received"].append(signum)
            _hold["since"] = now
            return
        if now - _hold["since"] < _SAME_STOP_S:
            return
        # Pressed again later: the block may be stuck (a loader worker that hangs); raise now.
    raise _INTERRUPTS[signum]


class interrupts_held:  # noqa: N801 (used like a function: `with interrupts_held():`)
    """Hold back a Ctrl-C or SIGTERM that arrives inside the block, and raise it at the block's end.

    For calls into code that takes locks (DataLoader iterators, their shutdown, tensorboard's writer queue), and
    for `__del__`s that join processes, where Python prints and then discards a KeyboardInterrupt (a Ctrl-C at the
    end of a run would be lost and training would go on). Blocks nest; a no-op outside the main thread (signal
    handlers run in the main thread only). Holds what raise_terminated and raise_interrupted raise (cli_main
    installs them); Python's own Ctrl-C handler and ignored signals are left alone.
    """

    __slots__ = ("_active",)

    def __enter__(self) -> interrupts_held:
        self._active = threading.current_thread() is threading.main_thread()
        if self._active:
            _hold["depth"] += 1
        return self

    def __exit__(self, *exc_info) -> None:
        if self._active:
            _hold["depth"] -= 1
            if _hold["depth"] == 0 and _hold["received"]:
                signum = _hold["received"].pop()
                raise _INTERRUPTS[signum]


def forget_held_interrupts() -> None:
    """Leave every interrupts_held block: at a command's end (cli_main), in a forked child (a loader worker forked
    as the iterator starts is not in the block)."""
    _hold["depth"] = 0
    _hold["received"].clear()


os.register_at_fork(after_in_child=forget_held_interrupts)


_END = object()


def signal_safe_iter(iterable: Iterable[T]) -> Iterator[T]:
    """Iterate `iterable` (a DataLoader) with Ctrl-C and SIGTERM held back while it starts, makes each item and is
    let go; they are raised between items, in the caller's code.

    Stop early with `.close()` (it stops a loader's workers at once and raises what was held meanwhile): a
    generator that Python finalises instead prints and drops the exception. A loader that forks its workers with
    exit_with_parent as their init forks them with SIGTERM, SIGHUP and SIGUSR1 blocked (stop_signals_blocked).
    """
    iterator = ()
    try:
        # A loader's workers are forked here: with the stop signals blocked, when they unblock them.
        with interrupts_held(), stop_signals_blocked(forks_workers_that_ignore_stops(iterable)):
            iterator = iter(iterable)
        while True:
            with interrupts_held():
                item = next(iterator, _END)
            if item is _END:
                return
            yield item
    finally:
        with interrupts_held():  # the last reference to a DataLoader iterator: its __del__ stops the workers
            del iterator


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose mistakes (missing or unknown flags, bad values) are a UserError, not usage + error,
    and whose flags that take a value are refused when given twice (argparse keeps the last: `--root A --root B`
    summarized B alone), however spelt (`--config X --config_file=Y`: argparse takes a flag's abbreviation).
    `twice_hints` maps a flag's dest to what its error adds."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)
        self.twice_hints: dict[str, str] = {}
        self._given: dict[str, str] = {}

    def parse_known_args(self, args=None, namespace=None):
        self._given = {}
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """Raise the mistake as a one-line UserError that points at --help."""
        raise UserError(f"{message} (see {self.prog} --help)")


class _StoreOnce(argparse._StoreAction):
    """argparse's "store", refused the second time in one command line."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = getattr(parser, "_given", {})
        words = " ".join(map(str, values)) if isinstance(values, list) else values  # (nargs="+")
        if self.dest in given:
            hint = getattr(parser, "twice_hints", {}).get(self.dest, f"give {self.option_strings[0]} once")
            parser.error(f"{self.option_strings[0]} is given twice ({given[self.dest]}, then {option_string} "
                         f"{words}); {hint}")
        given[self.dest] = f"{option_string} {words}"
        super().__call__(parser, namespace, values, option_string)


def nonempty(value: str) -> str:
    """An argparse type for a file or folder flag: `value`, refused when empty (`--root "$DIR"` with DIR unset would
    otherwise search or write the current folder)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty (an unset shell variable?); name a file or folder")
    return value


def require_file(path: str, what: str, hint: str = "") -> None:
    """Raise a one-line UserError `<what> not found: <path><hint>` unless `path` is a file (a folder is named so)."""
    if not os.path.isfile(path):
        if os.path.islink(path) and not os.path.exists(path):
            raise UserError(f"{what} {path} is a link to {os.readlink(path)}, which does not exist (moved, or on a "
                            "disk that is not mounted?); mend the link or give the file itself")
        problem = "is a folder, not a file" if os.path.isdir(path) else "not found"
        raise UserError(f"{what} {problem}: {path}{relative_path_note(path)}{run_checkpoint_note(path)}{hint}")


def run_checkpoint_note(path: str) -> str:
    """For a missing <experiment>/ckpt/<name> whose runs hold one (<experiment>/ckpt/run<i>/<name>: a multi-run
    experiment, a 1-run student baseline where a teacher's run was expected): a note naming the first; else ""."""
    folder, name = os.path.split(path)
    if os.path.basename(folder) != "ckpt":
        return ""
    runs = [run for run, _ in run_folders(folder) if os.path.isfile(os.path.join(run, name))]
    if not runs:
        return ""
    return (f" ({folder} holds the runs of a multi-run experiment, each with its own {name}: give one of them, "
            f"e.g. {os.path.join(runs[0], name)})")


def relative_path_note(path: str) -> str:
    """For a config's relative path, resolved from the repository root, that is missing there but exists from the
    current folder: a note saying so; else ""."""
    from lib.config import REPO_ROOT  # here, not above: lib.config imports this module

    rel = os.path.relpath(path, REPO_ROOT) if os.path.isabs(path) else os.pardir
    if rel.startswith(os.pardir) or os.path.exists(path) or not os.path.exists(rel) \
            or os.path.realpath(os.getcwd()) == os.path.realpath(REPO_ROOT):
        return ""
    return (f" (relative paths in a config, an override or a flag are taken from the repository root {REPO_ROOT}, "
            f"not the current folder, where {rel} exists: give it as {os.path.abspath(rel)})")


# How a torch.save file begins: a zip archive, or a pickle (torch.save's format before torch 1.6).
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")


def torch_file_problem(path: str) -> str | None:
    """Why the file `path` cannot be a torch.save file, in a few words (empty, text, cut short, of another kind),
    or None when it may be one."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None  # torch.load says what is wrong
    if size == 0:
        return "it is empty"
    if head.startswith(TORCH_FILE_STARTS[0]):
        return None if zipfile.is_zipfile(path) else \
            f"it is truncated or damaged ({size:,} bytes, not a whole torch archive)"
    if head.startswith(TORCH_FILE_STARTS):
        return None
    other = "it is not a torch checkpoint (neither a torch.save archive nor a pickle)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not only a character cut at the 4096th byte
            return other
    return other if b"\x00" in head else "it is a text file, not a torch checkpoint"


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (libraries' messages may span several lines)."""
    return (str(err).strip().splitlines() or [""])[0]


def one_line(message: str) -> str:
    """`message` on one line: its lines stripped and joined by spaces (what the scripts print after `error:`)."""
    if _WORKER_TRACEBACK in message:
        # A UserError raised in a DataLoader worker (the pil pipeline meeting an image that no longer decodes)
        # comes back with the worker's whole traceback in its message: the user needs the worker's own message,
        # on the traceback's first unindented line after its header ("lib.utils.errors.UserError: <message>").
        tail = message.split(_WORKER_TRACEBACK, 1)[1].splitlines()
        start = next((i for i, line in enumerate(tail) if line and not line[0].isspace()), None)
        if start is not None:
            message = "\n".join([tail[start].partition(": ")[2], *tail[start + 1:]])
    # A message may quote a library's multi-line text; the promise is one line.
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _in_the_way(path: str | bytes) -> tuple[str, str] | None:
    """Among `path` and its parents, the first that stops a folder being made there: ("link", path) for a link
    to nothing (a disk that is not mounted), ("file", path) for a file; None if neither."""
    path = os.path.abspath(os.fsdecode(path))
    while True:
        if os.path.islink(path) and not os.path.exists(path):
            return "link", path
        if os.path.lexists(path):
            return ("file", path) if not os.path.isdir(path) else None
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def os_error_message(err: OSError, where_to_choose: str = _WHERE_OUTPUTS_GO) -> str | None:
    """One line for an OSError the user fixes by choosing another folder (read-only, forbidden, full, a file or a
    broken link where a folder should be), else None. `where_to_choose` names the key or flag that picks the
    folder (by default the output folders of every script)."""
    if err.errno not in _NOT_WRITABLE | _FULL | _FILE_IN_THE_WAY | {errno.ENOENT, errno.EISDIR}:
        return None
    where = err.filename if err.filename is not None else "a file"
    if err.errno == errno.EISDIR:  # open(..., "w") onto a folder, or os.replace(tmp, folder): filename2
        where = err.filename2 or where
        return f"cannot open or write {where}: it is a folder, where a file is needed; move that folder away or " \
               f"choose another folder ({where_to_choose})"
    if err.errno in _FILE_IN_THE_WAY | {errno.ENOENT}:  # os.makedirs through or onto a file or a broken link
        blocking = _in_the_way(err.filename) if err.filename is not None else None
        if blocking and blocking[0] == "link":
            return f"cannot create the folder {where}: {blocking[1]} is a link to {os.readlink(blocking[1])}, " \
                   f"which does not exist (a disk that is not mounted?); mount or mend it, or choose another " \
                   f"folder ({where_to_choose})"
        if err.errno == errno.ENOENT:
            return None  # a file that is missing: not a folder the user chose
        what = f"the file {blocking[1]}" if blocking else "a file"
        return f"cannot create the folder {where}: {err.strerror or err} ({what} stands where a folder is needed); " \
               f"move that file or choose another folder ({where_to_choose})"
    if err.errno in _FULL:
        return f"cannot write {where}: {err.strerror or err}; free some space or choose another folder " \
               f"({where_to_choose})"
    if err.filename is not None and os.path.exists(err.filename) and not os.access(err.filename, os.R_OK):
        # An input (a config, an annotation file, a teacher) that this user may not read: no folder to choose.
        return f"cannot read {where}: {err.strerror or err}; fix its permissions (this user may not read it)"
    return f"cannot open or write {where}: {err.strerror or err}; fix its permissions or choose a writable folder " \
           f"({where_to_choose})"


def out_of_memory_message(err: BaseException, hint: str) -> str | None:
    """One line for a GPU out of memory (torch.cuda.OutOfMemoryError: a batch too large for the card, or another
    process holding it), saying what was asked for and what was free, then `hint`; the same for torch's CPU
    allocator (the machine's memory, or a container's or ulimit's limit: `hint`'s "free the GPU" then reads "free
    the memory"); None for any other error."""
    torch = sys.modules.get("torch")  # not imported here: only a process that loaded torch can meet its errors
    if torch is None:
        return None
    text = first_line(err)
    cpu = re.search(r"DefaultCPUAllocator: can't allocate memory: you tried to allocate (\d+) bytes", text)
    if isinstance(err, RuntimeError) and cpu:  # the machine's memory (or a container's or ulimit's limit)
        wanted = int(cpu.group(1)) / 2**30
        return f"the CPU ran out of memory (tried to allocate {wanted:.2f} GiB more): " \
               f"{hint.replace('free the GPU', 'free the memory')}"
    # cuBLAS and cuDNN allocate their own workspaces: their failures come as plain RuntimeErrors.
    if not (isinstance(err, torch.cuda.OutOfMemoryError)
            or isinstance(err, RuntimeError) and re.search(r"(CUBLAS|CUDNN)_STATUS_ALLOC_FAILED", text)):
        return None
    # torch's message is one long line: the request and the card's free memory, then allocator statistics.
    short = re.match(r".*? is free\.", text) or re.match(r".*?Tried to allocate [\d.]+ \w+\.", text)
    detail = short.group(0) if short else (text if len(text) <= 200 else text[:197] + "...")
    return f"the GPU ran out of memory ({detail}): {hint}"


def peer_gone_message(err: BaseException) -> str | None:
    """One line for a DDP collective that failed because another process of the job has gone (stopped by a signal,
    failed with its own error, killed): gloo's "Connection closed by peer" and the like, NCCL's aborted communicator;
    None for any other error, and outside a DDP job."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return None
    text = first_line(err)
    gloo = "gloo" in text and re.search(r"(closed|reset) by peer|Broken pipe", text)
    nccl = re.search(r"NCCL communicator was aborted|ncclRemoteError", text)
    if not (gloo or nccl):
        return None
    detail = text if len(text) <= 200 else text[:197] + "..."
    return (f"another process of this DDP job has gone ({detail}); its own line above, or torchrun's report, says "
            "why; re-run the same command to resume from the last saved epoch")


def batch_of_one_message(err: BaseException) -> str | None:
    """One line for batch norm given a training batch of one image whose feature map is 1x1 (a small input: an
    epoch's last batch of 1 image); None for any other error."""
    text = first_line(err)
    if "Expected more than 1 value per channel when training" not in text:
        return None
    return (f"a training batch of 1 image reached a batch-norm layer whose feature map is 1x1 at this input size "
            f"({text}): an epoch's last batch holds 1 image (the training images of each process modulo "
            "TRAIN.BATCH_SIZE); choose a TRAIN.BATCH_SIZE that leaves a larger last batch, or a larger input "
            "(DATA.CROP_SIZE, DATA.LESSEN_RATIO)")


def _rank_prefix() -> str:
    """'rank N: ' on a torchrun worker of rank 1 or more, whose line is said beside rank 0's; '' elsewhere."""
    return f"rank {os.environ['RANK']}: " if torchrun_rank_other_than_0() else ""


def make_folder(path: str, where_to_choose: str = _WHERE_OUTPUTS_GO) -> None:
    """os.makedirs(path, exist_ok=True), or one UserError naming the folder and `where_to_choose` another (a
    read-only, forbidden or full disk, a file or a broken link in the way, a place that takes no folders: /proc)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise folder_error(err, path, where_to_choose) from None


def folder_error(err: OSError, path: str, where_to_choose: str = _WHERE_OUTPUTS_GO) -> UserError:
    """The UserError for an OSError met while making the folder `path` (or a file in it)."""
    return UserError(os_error_message(err, where_to_choose)
                     or f"cannot create the folder {path}: {err.strerror or err}; choose another folder "
                        f"({where_to_choose})")


def cli_main(fn: Callable[[], object] | None = None, *, interrupted: str = INTERRUPTED_MESSAGE,
             memory_hint: str = TRAINING_MEMORY_HINT, one_process: bool = False) -> Callable:
    """Wrap a script's main(): a UserError (or an unwritable or full output folder, or a GPU out of memory, with
    `memory_hint` saying what to change) becomes `error: <message>` on stderr and exit status 2; Ctrl-C becomes one
    line, `interrupted` (how to resume, by default), and exit status 130.

    SIGTERM (a scheduler preempting the job, `kill <pid>`) unwinds like Ctrl-C and prints the same line, with
    exit status 143: the process stops its loader workers and run processes instead of leaving them behind. So does
    SIGHUP (a closed terminal), with 129, and SIGUSR1 (Slurm's warning ahead of a job's time limit), with 128 +
    SIGUSR1 (138 on Linux).

    `@cli_main` for the training scripts (their Ctrl-C line says how to resume; torchrun may start them);
    `@cli_main(interrupted=..., one_process=True)` for tools that have nothing to resume and work in one process
    (under torchrun each of its processes would do the whole job, into the same files: refused in one line).
    """
    if fn is None:
        return functools.partial(cli_main, interrupted=interrupted, memory_hint=memory_hint, one_process=one_process)

    @functools.wraps(fn)
    def wrapper() -> None:
        try:
            handled()
        except KeyboardInterrupt as err:  # in the command, or as it ended, while its handlers were put back
            # A run may say better how to resume (`message`: a command given BASIC.FRESH_START True).
            _exit(getattr(err, "message", interrupted), getattr(err, "exit_status", INTERRUPTED_EXIT))

    def handled() -> None:
        # Only the default handlers are replaced (SIGTERM would kill outright): a caller that handles a signal (a
        # test runner) keeps its handler.
        ours = {}
        if threading.current_thread() is threading.main_thread():
            defaults = {**dict.fromkeys((signal.SIGTERM, *STOP_SIGNALS), (signal.SIG_DFL, raise_terminated)),
                        signal.SIGINT: (signal.default_int_handler, raise_interrupted)}  # (nohup's SIGHUP: kept)
            ours = {s: default for s, (default, handler) in defaults.items() if signal.getsignal(s) is default}
            for s in ours:
                signal.signal(s, defaults[s][1])
        try:
            try:
                os.getcwd()
            except FileNotFoundError:  # removed under the shell (an old checkout deleted from another terminal)
                raise UserError("the current folder no longer exists (it was deleted or moved); cd to an existing "
                                "folder and run the command again") from None
            world_size = os.environ.get("WORLD_SIZE", "1")
            if one_process and "TORCHELASTIC_RUN_ID" in os.environ and world_size != "1":
                raise UserError(f"{os.path.basename(sys.argv[0])} works in one process, but torchrun started "
                                f"{world_size} (WORLD_SIZE {world_size}), each of which would do the whole job into "
                                "the same files; run it with python (torchrun is for the training scripts)")
            fn()
        except UserError as err:
            # A mistake met while training (a rank's own images or loss: `every_rank`) may be this rank's alone.
            every_rank = getattr(err, "every_rank", False)
            _exit(f"error: {_rank_prefix() if every_rank else ''}{one_line(str(err))}", USER_ERROR_EXIT,
                  every_rank=every_rank)
        except BrokenPipeError:
            if not stdout_is_a_closed_pipe():
                raise
            # `... | head`: the reader has what it wanted. The tool stops there, quietly, with the status a shell
            # gives a program that SIGPIPE ends (Python ignores SIGPIPE), as `cat` would.
            _silence_output()
            sys.exit(CLOSED_PIPE_EXIT)
        except OSError as err:
            message = os_error_message(err)
            if message is None:
                raise
            _exit(f"error: {one_line(message)}", USER_ERROR_EXIT)
        except (RuntimeError, ValueError) as err:
            message = out_of_memory_message(err, memory_hint) or peer_gone_message(err) or batch_of_one_message(err)
            if message is None:
                raise
            # Not a mistake that every rank of a DDP job meets: one card may be full, or shared; a peer gone, a
            # rank's own last batch. Each says it.
            _exit(f"error: {_rank_prefix()}{message}", USER_ERROR_EXIT, every_rank=True)
        finally:
            for s, default in ours.items():
                signal.signal(s, default)
            forget_held_interrupts()  # a block an exception left (a signal raised as it began or ended)
            if ours and not _stop_at_exit_registered:
                atexit.register(_stop_at_once_while_exiting, tuple(ours))
                _stop_at_exit_registered.append(True)

    return wrapper


# Once per process: cli_main's commands may run one after another in one process (tests).
_stop_at_exit_registered: list[bool] = []


def _stop_at_once_while_exiting(signals: tuple[int, ...]) -> None:
    """At interpreter exit (before the libraries' exit callbacks, registered earlier), a Ctrl-C or SIGTERM ends the
    process at once and quietly: the command has finished, and a KeyboardInterrupt raised in torch's exit callbacks
    would print "Exception ignored in atexit callback" and a traceback. A handler the user set is kept."""
    defaults = {**dict.fromkeys((signal.SIGTERM, *STOP_SIGNALS), signal.SIG_DFL),
                signal.SIGINT: signal.default_int_handler}
    for s in signals:
        if signal.getsignal(s) is defaults.get(s):
            signal.signal(s, _exit_at_once)


def _exit_at_once(signum: int, frame) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(128 + signum)


def _exit(line: str, status: int, every_rank: bool = False) -> NoReturn:
    # Under torchrun every rank meets the same mistake: rank 0 alone says it (unless `every_rank`).
    if every_rank or not torchrun_rank_other_than_0():
        try:
            print(line, file=sys.stderr, flush=True)
        except OSError:  # stderr is a closed pipe (`... 2>&1 | head`): the exit status still tells
            _silence_output()
    sys.exit(status)


def stdout_is_a_closed_pipe() -> bool:
    """Whether standard output is a pipe whose reader has gone (`... | head` after head's lines)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no poll (Windows), no file descriptor (a test's capture)
        return False


def silence_stdout() -> None:
    """Point standard output at /dev/null (its reader has gone), so that later lines are dropped, not errors."""
    _to_devnull(sys.stdout)


def _silence_output() -> None:
    """Point stdout and stderr at /dev/null, so that flushing them at exit cannot fail again (exit status 120)."""
    _to_devnull(sys.stdout, sys.stderr)


def _to_devnull(*streams) -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        for stream in streams:
            os.dup2(devnull, stream.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor behind them (a test's capture): nothing to do
        pass
    finally:
        os.close(devnull)


def torchrun_rank_other_than_0() -> bool:
    """Whether this process is a torchrun worker of rank 1 or more (rank 0 says the job's lines for all)."""
    rank = os.environ.get("RANK", "0")
    return "TORCHELASTIC_RUN_ID" in os.environ and rank.isdigit() and int(rank) > 0
