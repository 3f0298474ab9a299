"""Train one network once (the teacher) at DATA.CROP_SIZE.

Writes <OUTPUT_ROOT>/<dataset>/1runs_<arch>_<crop>_seed<seed>_<lr>/ckpt/model_best.pth, the file the
distillation configs name as MODEL.MODELDICT_T."""

from lib.config import load_config, parse_args
from lib.utils.errors import cli_main


@cli_main
def main() -> None:
    """Parse --config_file and KEY VALUE overrides, then train."""
    cfg = load_config(parse_args(description=__doc__), one_run=True)
    # Imported once the arguments are read, inside cli_main: --help and config mistakes answer at once,
    # and Ctrl-C while torch loads is one line too.
    from lib.engine.trainer import run_experiment

    run_experiment(cfg, "single", num_runs=1, multi_run=False)


if __name__ == "__main__":
    main()
