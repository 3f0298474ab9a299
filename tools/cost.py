"""Deployment cost of architectures x input sizes: parameters, FLOPs, peak activation memory, latency, input bytes.

Writes cost.md, cost.csv and cost.json into --out. See lib/analysis/cost.py for how each figure is measured.
"""

import argparse
from collections.abc import Sequence

from lib.config import resolve_path
from lib.utils.errors import TOOL_INTERRUPTED_MESSAGE, ArgumentParser, cli_main, nonempty


def parse_args() -> argparse.Namespace:
    """The command line."""
    # Torch-free: --help and flag mistakes answer at once.
    from lib.analysis.cost_defaults import (
        DEFAULT_BATCH_SIZES,
        DEFAULT_NUM_CLASSES,
        DEFAULT_REPEATS,
        DEFAULT_SIZES,
        DEFAULT_WARMUP,
    )

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", metavar="ARCH", default=None,
                        help="builder names; a ViT family (vit_tiny_patch16) is measured at every size "
                             "(default: every architecture)")
    parser.add_argument("--sizes", nargs="+", type=int, metavar="PX", default=list(DEFAULT_SIZES),
                        help=f"input sizes in pixels (default: {_words(DEFAULT_SIZES)})")
    parser.add_argument("--batch-sizes", nargs="+", type=int, metavar="N", default=list(DEFAULT_BATCH_SIZES),
                        help=f"batch sizes of the latency and memory measurements (default: "
                             f"{_words(DEFAULT_BATCH_SIZES)})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    parser.add_argument("--repeats", type=int, metavar="N", default=None,
                        help=f"timed forwards, median reported ({_per_device(DEFAULT_REPEATS)})")
    parser.add_argument("--warmup", type=int, metavar="N", default=None,
                        help=f"untimed forwards first ({_per_device(DEFAULT_WARMUP)})")
    parser.add_argument("--num-classes", type=int, metavar="N", default=DEFAULT_NUM_CLASSES,
                        help="classifier outputs (default: %(default)s)")
    parser.add_argument("--out", type=nonempty, metavar="DIR", default="ckpt/cost",
                        help="output folder, relative to the repository root (default: %(default)s)")
    return parser.parse_args()


def _words(values: Sequence[int]) -> str:
    """Values as they are typed on the command line: `224 112 56`."""
    return " ".join(str(value) for value in values)


def _per_device(counts: dict[str, int]) -> str:
    """A default that depends on the device: `default: 20 on a GPU, 5 on the CPU`."""
    return f"default: {counts['cuda']} on a GPU, {counts['cpu']} on the CPU"


@cli_main(interrupted=TOOL_INTERRUPTED_MESSAGE, one_process=True,
          memory_hint="use smaller --batch-sizes or free the GPU of other processes")
def main() -> None:
    """Parse the flags, measure, write the tables."""
    args = parse_args()
    # Imported once the flags are read, inside cli_main: --help answers at once, and Ctrl-C while torch loads is
    # one line too.
    from lib.analysis.cost import default_archs, run_cost

    out = resolve_path(args.out)
    run_cost(args.archs or default_archs(), args.sizes, args.batch_sizes, args.device, args.warmup, args.repeats, out,
             args.num_classes)
    print(f"wrote {out}/cost.md, cost.csv, cost.json")


if __name__ == "__main__":
    main()
