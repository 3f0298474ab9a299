"""TAS in one command: stage 1 (teacher -> assistant at DATA.CROP_SIZE) then stage 2 (assistant -> student at
CROP_SIZE / LESSEN_RATIO). Stage 1 is skipped when its assistant checkpoint already exists; re-running the
command resumes whichever stage was interrupted."""

from lib.config import load_config, parse_args
from lib.utils.errors import cli_main


@cli_main
def main() -> None:
    """Parse --config_file and KEY VALUE overrides, then run both stages."""
    cfg = load_config(parse_args(description=__doc__))
    # Imported once the arguments are read, inside cli_main: --help and config mistakes answer at once,
    # and Ctrl-C while torch loads is one line too.
    from lib.engine.tas import train_two_stages

    train_two_stages(cfg)


if __name__ == "__main__":
    main()
