"""Benchmark the training step: end to end, model only, teacher forward, loader; every input pipeline.

python tools/benchmark.py --config_file configs/bench/cpu_isrd.yaml [--steps N] [--warmup N] [--repeats N]
    [--pipelines tensor,pil,device] [--method auto|single|kd|at|sp|ickd|dkd|isrd] [--profile] [KEY VALUE ...]
Prints a table and writes benchmark.json into BASIC.OUTPUT_ROOT (--profile: also torch.profiler traces and tables
of model-only and end-to-end steps into BASIC.OUTPUT_ROOT/profile).
"""

import json
import os

from lib.config import KDTYPES, PIPELINES, config_parser, load_config, parse_args, resolve_path
from lib.utils.errors import TOOL_INTERRUPTED_MESSAGE, UserError, cli_main, make_folder


@cli_main(interrupted=TOOL_INTERRUPTED_MESSAGE, one_process=True)
def main() -> None:
    """Parse the arguments, measure, print and save."""
    parser = config_parser(__doc__, trains=False)
    parser.add_argument("--steps", type=int, default=20, metavar="N",
                        help="timed training steps per figure (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N",
                        help="untimed steps before each figure (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N",
                        help="alternating model-only / end-to-end measurements; their medians are reported "
                             "(default: %(default)s)")
    parser.add_argument("--pipelines", default=",".join(PIPELINES),
                        help="comma-separated DATA.PIPELINE values (default: %(default)s)")
    parser.add_argument("--method", default="auto",
                        help=f"the training step to measure: single, {', '.join(KDTYPES)} or isrd; auto (default): "
                             "single without MODEL.ARCH_T, isrd when FSR.ETA > 0, else MODEL.KDTYPE")
    parser.add_argument("--profile", action="store_true",
                        help="also profile model-only and end-to-end steps (Chrome traces, top host operations)")
    args = parse_args(parser=parser)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        raise UserError(f"--steps must be >= 1, --warmup >= 0 and --repeats >= 1, got --steps {args.steps} "
                        f"--warmup {args.warmup} --repeats {args.repeats}")
    stray = [word for word in args.opts[0::2] if word in PIPELINES]  # `--pipelines tensor pil`: a pair shifted
    if stray:
        raise UserError(f"--pipelines takes one comma-separated word, e.g. --pipelines {args.pipelines},"
                        f"{','.join(stray)}; {stray[0]} came as a word of its own")
    pipelines = tuple(args.pipelines.split(","))
    if not set(pipelines) <= set(PIPELINES):
        raise UserError(f"--pipelines takes a comma-separated list of {', '.join(PIPELINES)}, got {args.pipelines!r}")
    cfg = load_config(args)
    # Imported once the arguments are read, inside cli_main: --help and config mistakes answer at once,
    # and Ctrl-C while torch loads is one line too.
    from lib.engine.benchmark import benchmark_method, format_benchmark, run_benchmark
    from lib.engine.checkpoint import save_json

    method = benchmark_method(cfg, args.method)
    root = resolve_path(cfg.BASIC.OUTPUT_ROOT)
    make_folder(root)  # a blocked or forbidden output folder fails now, not after the measurements
    result = run_benchmark(cfg, args.steps, args.warmup, pipelines, args.repeats,
                           os.path.join(root, "profile") if args.profile else None, method)
    print(format_benchmark(result))
    path = os.path.join(root, "benchmark.json")
    save_json(result, path)
    print(f"wrote {path}")
    print(json.dumps({k: v for k, v in result.items() if k.endswith("_img_s")}))


if __name__ == "__main__":
    main()
