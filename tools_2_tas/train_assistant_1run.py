"""TAS stage 1, model compression: teacher MODEL.ARCH_T -> assistant MODEL.ARCH_A, both at DATA.CROP_SIZE.

One seeded run of TAS.STAGE1_KDTYPE (kd | at | sp | ickd | dkd). Writes
<OUTPUT_ROOT>/<dataset>/1runs_<kdtype>_<teacher>_<crop>_<assistant>_<crop>_seed<seed>_<lr>/ckpt/model_best.pth,
the file stage 2 loads as MODEL.MODELDICT_A (lib.distillers.tas.assistant_checkpoint)."""

from lib.config import load_config, parse_args
from lib.utils.errors import cli_main


@cli_main
def main() -> None:
    """Parse --config_file and KEY VALUE overrides, then train the assistant."""
    cfg = load_config(parse_args(description=__doc__), one_run=True)
    # Imported once the arguments are read, inside cli_main: --help and config mistakes answer at once,
    # and Ctrl-C while torch loads is one line too.
    from lib.engine.tas import train_assistant

    train_assistant(cfg)


if __name__ == "__main__":
    main()
