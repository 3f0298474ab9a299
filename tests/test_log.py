import logging
import os

from lib.utils.errors import FRESH_START_INTERRUPTED_MESSAGE, Terminated, UserError
from lib.utils.log import INTERRUPTED_LINE, add_log_file, get_logger, held_warnings, log_stop


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
    fresh = KeyboardInterrupt()
    fresh.message = FRESH_START_INTERRUPTED_MESSAGE  # a command given BASIC.FRESH_START True, as the trainer marks it
    log_stop(handler, fresh)
    assert handler.lines == ["error: the loss is not finite in run 0",
                             "error: RuntimeError: CUDA error: an illegal memory access", INTERRUPTED_LINE,
                             "stopped: interrupted; re-run the same command without BASIC.FRESH_START True to resume"]


def test_held_warnings_print_nothing_until_released_and_let_info_through(capsys):
    log = get_logger()
    with held_warnings() as held:
        log.warning("warning: held")
        log.info("info passes")
    assert held == ["warning: held"]
    log.warning("warning: after")
    assert capsys.readouterr().out.splitlines() == ["info passes", "warning: after"]


def test_a_user_error_from_a_loader_worker_keeps_its_whole_message_even_one_quoting_another_error():
    from lib.utils.errors import one_line

    # What torch's ExceptionWrapper makes of a UserError raised in worker 0 (its message quotes an inner error).
    inner = "cannot read image /data/a.jpg (UserError: decoder said no); see data/README.md"
    wrapped = ("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "/torch/utils/data/_utils/worker.py", line 375, in _worker_loop\n    data = fetch(index)\n'
               '  File "/lib/datasets/transforms.py", line 289, in __getitem__\n    raise UserError(f"...")\n'
               f"lib.utils.errors.UserError: {inner}\n")
    assert one_line(wrapped) == inner
    assert one_line(f"line one\n  {inner}") == f"line one {inner}"  # an ordinary message: only joined


def test_a_path_of_bytes_that_are_not_utf8_is_logged_escaped_on_stdout_and_as_those_bytes_in_train_log(
        tmp_path, capsys):
    path = os.fsdecode(b"/data/lat\xe9n")  # a folder named under Latin-1: a lone surrogate in Python's str
    handler = add_log_file(str(tmp_path / "train.log"))
    try:
        get_logger().info(f"command: python train.py DATA.DATADIR {path}")
    finally:
        get_logger().removeHandler(handler)
        handler.close()
    out, err = capsys.readouterr()
    assert out == "command: python train.py DATA.DATADIR /data/lat\\udce9n\n" and err == ""  # no "Logging error"
    assert (tmp_path / "train.log").read_bytes().endswith(b" command: python train.py DATA.DATADIR /data/lat\xe9n\n")
