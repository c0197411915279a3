"""`tunesmith` command line: parse arguments, build configs, call recipes, print results.

Every user error (TunesmithError) ends in one line on stderr and exit code 2; `--debug` shows the
traceback.
"""

import argparse
import logging
import sys

from ..errors import TunesmithError
from . import commands

log = logging.getLogger("tunesmith")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesmith", description="Fine-tune transformer language models."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, add_args, help_text) in commands.COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=func)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _quiet_transformers(args.debug)
    try:
        return args.func(args) or 0
    except TunesmithError as e:
        if args.debug:
            raise
        print(f"error{_rank_tag()}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted; the last checkpoint is kept (run the same command to resume)",
            file=sys.stderr,
        )
        return 130


def _rank_tag() -> str:
    """' (rank 1)' in a run of several processes, so torchrun's merged output names the rank."""
    from ..utils.distributed import rank, world_size

    return f" (rank {rank()})" if world_size() > 1 else ""


def _quiet_transformers(debug: bool) -> None:
    # transformers' own per-load progress bars and advisory warnings drown our output.
    from transformers.utils import logging as hf_logging

    if not debug:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
