"""Collect every results.json under an output root into the paper's table (markdown, CSV) and plot accuracy
against the student's FLOPs and input pixels. See lib/analysis/summary.py for how rows and cells are formed."""

import argparse
import os

from lib.analysis import check_output_root
from lib.config import resolve_path
from lib.utils.errors import TOOL_INTERRUPTED_MESSAGE, ArgumentParser, cli_main, nonempty


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=nonempty, default="ckpt",
                        help="output root to search (BASIC.OUTPUT_ROOT; default ckpt)")
    parser.add_argument("--out", type=nonempty, default=None, help="output folder (default <root>/summary)")
    return parser.parse_args()


@cli_main(interrupted=TOOL_INTERRUPTED_MESSAGE, one_process=True)
def main() -> None:
    """Parse the flags, then summarise."""
    args = parse_args()
    root = resolve_path(args.root)
    # Checked before the import below loads torch (seconds): a mistyped --root answers at once.
    check_output_root(root)
    # Imported once the flags are read, inside cli_main: --help answers at once, and Ctrl-C while torch loads is
    # one line too.
    from lib.analysis.summary import summarize

    summarize(root, resolve_path(args.out) if args.out else os.path.join(root, "summary"))


if __name__ == "__main__":
    main()
