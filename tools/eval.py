"""Evaluate the checkpoint TEST.CHECKPOINT on the test split at the student's resolution.

Prints top-1, top-5 and mean per-class accuracy; writes them (metrics.json), a per-class report (CSV) and the
confusion matrix (CSV, PNG) into <checkpoint folder>/eval/<checkpoint name>_<size>px/. Usually run with the
experiment's config.yaml:

    python tools/eval.py --config_file ckpt/cub/<experiment>/config.yaml TEST.CHECKPOINT <.../model_best.pth>
"""

from lib.config import load_config, parse_args
from lib.utils.errors import TOOL_INTERRUPTED_MESSAGE, cli_main


@cli_main(interrupted=TOOL_INTERRUPTED_MESSAGE, one_process=True,
          memory_hint="use a smaller TEST.BATCH_SIZE or free the GPU of other processes")
def main() -> None:
    """Parse --config_file and KEY VALUE overrides, then evaluate."""
    cfg = load_config(parse_args(description=__doc__, trains=False))
    # Imported once the arguments are read, inside cli_main: --help and config mistakes answer at once,
    # and Ctrl-C while torch loads is one line too.
    from lib.analysis.evaluate import evaluate_checkpoint

    evaluate_checkpoint(cfg)


if __name__ == "__main__":
    main()
