"""TAS stage 2, input compression: frozen assistant MODEL.ARCH_A at DATA.CROP_SIZE -> student MODEL.ARCH_S (the
same architecture) at CROP_SIZE / LESSEN_RATIO, with logit KD + ISRD + feature distillation, BASIC.NUM_RUNS runs.

MODEL.MODELDICT_A '' loads stage 1's output (tools_2_tas/train_assistant_1run.py). Writes
<OUTPUT_ROOT>/<dataset>/<n>runs_tas_<teacher>_<crop>_<student>_<small crop>_seed<seed>_<lr>/."""

from lib.config import load_config, parse_args
from lib.utils.errors import cli_main


@cli_main
def main() -> None:
    """Parse --config_file and KEY VALUE overrides, then train the students."""
    cfg = load_config(parse_args(description=__doc__))
    # Imported once the arguments are read, inside cli_main: --help and config mistakes answer at once,
    # and Ctrl-C while torch loads is one line too.
    from lib.engine.tas import train_tas

    train_tas(cfg)


if __name__ == "__main__":
    main()
