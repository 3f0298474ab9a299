"""One-stage pixel distillation with ISRD (the paper's method): logit KD + FSR.ETA x L1 of the decoded input feature."""

from lib.config import load_config, parse_args
from lib.utils.errors import cli_main


@cli_main
def main() -> None:
    """Parse --config_file and KEY VALUE overrides, then train."""
    # Imported here, inside cli_main: Ctrl-C while torch loads is one line too, and --help is instant.
    from lib.engine.trainer import run_experiment

    cfg = load_config(parse_args(description=__doc__))
    run_experiment(cfg, "isrd", num_runs=cfg.BASIC.NUM_RUNS, multi_run=True)


if __name__ == "__main__":
    main()
