"""Evaluate the checkpoint TEST.CHECKPOINT on the test split at the student's resolution.

Prints top-1, top-5 and mean per-class accuracy; writes them (metrics.json), a per-class report (CSV) and the
confusion matrix (CSV, PNG) into <checkpoint folder>/eval/<checkpoint name>_<size>px/ (or --out DIR). Usually run
with the experiment's config.yaml:

    python tools/eval.py --config_file ckpt/cub/<experiment>/config.yaml TEST.CHECKPOINT <.../model_best.pth>
"""

from lib.config import config_parser, load_config, parse_args
from lib.utils.errors import TOOL_INTERRUPTED_MESSAGE, cli_main, nonempty


@cli_main(interrupted=TOOL_INTERRUPTED_MESSAGE, one_process=True,
          memory_hint="use a smaller TEST.BATCH_SIZE or free the GPU of other processes")
def main() -> None:
    """Parse --config_file, --out and KEY VALUE overrides, then evaluate."""
    parser = config_parser(__doc__, trains=False)
    parser.add_argument("--out", type=nonempty, metavar="DIR",
                        help="folder of the report (default: <checkpoint folder>/eval/<checkpoint name>_<size>px; "
                             "give one for a checkpoint in a read-only folder)")
    args = parse_args(parser=parser)
    cfg = load_config(args)
    # Imported once the arguments are read, inside cli_main: --help and config mistakes answer at once,
    # and Ctrl-C while torch loads is one line too.
    from lib.analysis.evaluate import evaluate_checkpoint

    evaluate_checkpoint(cfg, args.out)


if __name__ == "__main__":
    main()
