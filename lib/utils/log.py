"""The project's logger: plain lines on stdout, and a run's train.log beside them."""

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator

from .errors import (
    FRESH_START_INTERRUPTED_MESSAGE,
    TRAINING_MEMORY_HINT,
    UserError,
    first_line,
    one_line,
    out_of_memory_message,
    silence_stdout,
    stdout_is_a_closed_pipe,
)

LOGGER_NAME = "pixel_distill"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time of each record (it may be replaced, e.g. by pytest)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass

    def handleError(self, record: logging.LogRecord) -> None:
        # `python train... | head`: once head has its lines, training goes on (train.log keeps every line) and
        # stdout's lines are dropped, instead of a "--- Logging error ---" traceback on stderr for each.
        err = sys.exc_info()[1]
        if isinstance(err, BrokenPipeError) and stdout_is_a_closed_pipe():
            silence_stdout()
            return
        if isinstance(err, UnicodeEncodeError):  # a path of non-UTF-8 bytes: the line, with those bytes escaped
            encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
            line = self.format(record) + self.terminator
            sys.stdout.write(line.encode(encoding, "backslashreplace").decode(encoding))
            self.flush()
            return
        super().handleError(record)


def get_logger() -> logging.Logger:
    """The project logger, printing plain lines to stdout."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class _HeldWarnings(logging.Filter):
    """Keeps the project logger's warnings (as lines) instead of letting them print."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.lines.append(record.getMessage())
        return False


class WarnOnce(logging.Filter):
    """Lets each distinct warning through once: the runs of an experiment build their networks again and would
    repeat what the first build warned of (an ignored weight file, say)."""

    def __init__(self, said: Iterable[str] = ()) -> None:
        super().__init__()
        self.said: set[str] = set(said)  # a run process: what the main process has said already

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if message in self.said:
            return False
        self.said.add(message)
        return True


@contextlib.contextmanager
def _filtering(log_filter: logging.Filter) -> Iterator[logging.Filter]:
    """The project logger with `log_filter` inside the block."""
    logger = get_logger()
    logger.addFilter(log_filter)
    try:
        yield log_filter
    finally:
        logger.removeFilter(log_filter)


def warnings_once() -> contextlib.AbstractContextManager:
    """Inside the block, the project logger says each distinct warning once (see WarnOnce)."""
    return _filtering(WarnOnce())


@contextlib.contextmanager
def held_warnings() -> Iterator[list[str]]:
    """Hold back the project logger's warnings inside the block; the yielded list holds their lines, for the caller
    to log once its checks have passed (a mistake found meanwhile stays one line, and the warnings reach train.log)."""
    with _filtering(_HeldWarnings()) as holder:
        yield holder.lines


def add_log_file(path: str) -> logging.FileHandler:
    """Also append the log to `path` (with timestamps); returns the handler so it can be removed."""
    # A path of non-UTF-8 bytes (in the command line, say) is written back as those bytes, not a logging error.
    handler = logging.FileHandler(path, encoding="utf-8", errors="surrogateescape")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    get_logger().addHandler(handler)
    return handler


# The last line of a train.log whose command stopped before its results.json (tools/summarize.py reads it back).
ERROR_PREFIX, INTERRUPTED_LINE = "error: ", "stopped: interrupted; re-run the same command to resume"
# ... of a command given BASIC.FRESH_START True, which would move this attempt aside again.
FRESH_START_INTERRUPTED_LINE = ("stopped: interrupted; re-run the same command without BASIC.FRESH_START True to "
                                "resume")


def log_stop(handler: logging.Handler, err: BaseException) -> None:
    """Append why a command stopped to its train.log alone (`handler`): the error line that the script prints on
    stderr, or that it was interrupted (Ctrl-C, SIGTERM)."""
    if isinstance(err, KeyboardInterrupt):
        fresh = getattr(err, "message", None) == FRESH_START_INTERRUPTED_MESSAGE
        line = FRESH_START_INTERRUPTED_LINE if fresh else INTERRUPTED_LINE
    elif isinstance(err, UserError):
        line = ERROR_PREFIX + one_line(str(err))
    else:
        line = ERROR_PREFIX + (out_of_memory_message(err, TRAINING_MEMORY_HINT)
                               or f"{type(err).__name__}: {first_line(err)}")
    handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.ERROR, "levelname": "ERROR"}))
