import logging

from lib.utils.errors import Terminated, UserError
from lib.utils.log import INTERRUPTED_LINE, get_logger, held_warnings, log_stop


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_log_stop_writes_the_error_line_the_script_prints_or_that_it_was_interrupted():
    handler = _Lines()
    log_stop(handler, UserError("the loss is not finite\n  in run 0"))  # one line, as cli_main prints it
    log_stop(handler, RuntimeError("CUDA error: an illegal memory access\nCompile with TORCH_USE_CUDA_DSA"))
    log_stop(handler, Terminated())  # SIGTERM, a KeyboardInterrupt subclass
    assert handler.lines == ["error: the loss is not finite in run 0",
                             "error: RuntimeError: CUDA error: an illegal memory access", INTERRUPTED_LINE]


def test_held_warnings_print_nothing_until_released_and_let_info_through(capsys):
    log = get_logger()
    with held_warnings() as held:
        log.warning("warning: held")
        log.info("info passes")
    assert held == ["warning: held"]
    log.warning("warning: after")
    assert capsys.readouterr().out.splitlines() == ["info passes", "warning: after"]
