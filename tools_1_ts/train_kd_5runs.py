"""One-stage pixel distillation with MODEL.KDTYPE (kd, at, sp, ickd, dkd).

The teacher sees DATA.CROP_SIZE images, the student CROP_SIZE / LESSEN_RATIO.
"""

from lib.config import load_config, parse_args
from lib.utils.errors import cli_main


@cli_main
def main() -> None:
    """Parse --config_file and KEY VALUE overrides, then train."""
    cfg = load_config(parse_args(description=__doc__))
    # Imported once the arguments are read, inside cli_main: --help and config mistakes answer at once,
    # and Ctrl-C while torch loads is one line too.
    from lib.engine.trainer import run_experiment

    run_experiment(cfg, cfg.MODEL.KDTYPE, num_runs=cfg.BASIC.NUM_RUNS, multi_run=True)


if __name__ == "__main__":
    main()
