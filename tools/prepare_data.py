"""Download CUB-200-2011 and FGVC-Aircraft, verify their checksums, and extract them into data/cub and data/aircraft
(the layout the configs expect); or, with --verify-only, check the datasets already there.

See lib/analysis/prepare.py for the checksums, where they come from, and what is checked."""

import argparse

from lib.config import resolve_path
from lib.utils.errors import TOOL_INTERRUPTED_MESSAGE, ArgumentParser, UserError, cli_main, nonempty


def parse_args() -> argparse.Namespace:
    """The command line."""
    from lib.analysis.prepare import ARCHIVES

    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", choices=list(ARCHIVES), default=list(ARCHIVES),
                        help="datasets to prepare (default: both)")
    parser.add_argument("--root", type=nonempty, default="data",
                        help="data folder (relative to the repository root; default data)")
    parser.add_argument("--url-cub", type=nonempty, default=None,
                        help=f"CUB archive URL, or the archive's path (default {ARCHIVES['cub'].url})")
    parser.add_argument("--url-aircraft", type=nonempty, default=None,
                        help=f"Aircraft archive URL, or the archive's path (default {ARCHIVES['aircraft'].url})")
    parser.add_argument("--md5-cub", default=None,
                        help=f"expected MD5 of the CUB archive (default {ARCHIVES['cub'].md5})")
    parser.add_argument("--md5-aircraft", default=None,
                        help=f"expected MD5 of the Aircraft archive (default {ARCHIVES['aircraft'].md5})")
    parser.add_argument("--no-verify", action="store_true", help="skip the archives' size and MD5 checks")
    parser.add_argument("--verify-only", action="store_true",
                        help="only check the datasets already under --root (or --root itself when it is a "
                             "dataset's own folder, e.g. data/demo_cub)")
    return parser.parse_args()


@cli_main(interrupted=TOOL_INTERRUPTED_MESSAGE, one_process=True)
def main() -> None:
    """Parse the flags, then prepare or verify each dataset."""
    # Imported inside cli_main (parse_args too): Ctrl-C while an import loads is one line; torch loads only when
    # a layout is checked, so --help answers at once.
    from lib.analysis.prepare import prepare

    args = parse_args()
    for name in ("cub", "aircraft"):  # a flag for a dataset not prepared would be ignored
        given = [flag for flag in (f"--url-{name}", f"--md5-{name}") if getattr(args, flag[2:].replace("-", "_"))]
        if given and name not in args.datasets:
            raise UserError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} given, but --datasets "
                            f"{' '.join(args.datasets)} leaves {name} out; add {name} to --datasets, or drop "
                            f"{' and '.join(given)}")
    prepare(args.datasets, resolve_path(args.root), urls={"cub": args.url_cub, "aircraft": args.url_aircraft},
            md5s={"cub": args.md5_cub, "aircraft": args.md5_aircraft}, verify=not args.no_verify,
            verify_only=args.verify_only)


if __name__ == "__main__":
    main()
