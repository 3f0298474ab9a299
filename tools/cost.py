"""Deployment cost of architectures x input sizes: parameters, FLOPs, peak activation memory, latency, input bytes.

Writes cost.md, cost.csv and cost.json into --out. See lib/analysis/cost.py for how each figure is measured.
"""

import argparse

from lib.config import resolve_path
from lib.utils.errors import TOOL_INTERRUPTED_MESSAGE, ArgumentParser, cli_main


def parse_args() -> argparse.Namespace:
    """The command line."""
    from lib.analysis.cost import DEFAULT_BATCH_SIZES, DEFAULT_NUM_CLASSES, DEFAULT_SIZES, default_archs

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=default_archs(),
                        help="builder names; a ViT family (vit_tiny_patch16) is measured at every size "
                             "(default: every architecture)")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES), help="input sizes in pixels")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(DEFAULT_BATCH_SIZES),
                        help="batch sizes of the latency and memory measurements")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--repeats", type=int, default=None, help="timed forwards, median reported (20 GPU, 5 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed forwards first (5 GPU, 1 CPU)")
    parser.add_argument("--num-classes", type=int, default=DEFAULT_NUM_CLASSES, help="classifier outputs")
    parser.add_argument("--out", default="ckpt/cost", help="output folder (relative to the repository root)")
    return parser.parse_args()


@cli_main(interrupted=TOOL_INTERRUPTED_MESSAGE)
def main() -> None:
    """Parse the flags, measure, write the tables."""
    # Imported inside cli_main (parse_args too): Ctrl-C while torch loads is one line.
    from lib.analysis.cost import run_cost

    args = parse_args()
    out = resolve_path(args.out)
    run_cost(args.archs, args.sizes, args.batch_sizes, args.device, args.warmup, args.repeats, out,
             args.num_classes)
    print(f"wrote {out}/cost.md, cost.csv, cost.json")


if __name__ == "__main__":
    main()
