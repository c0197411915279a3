"""`tunesmith train CONFIG --nproc N`: start torchrun with this same command, one process per rank.

Equal to `torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT] -m tunesmith train
CONFIG [overrides]`; torchrun stops every rank when one of them fails.
"""

import subprocess
import sys


def add_launch_args(p) -> None:
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes on this machine (torchrun --nproc-per-node); >1 trains data-parallel",
    )
    p.add_argument("--nnodes", type=int, default=1, help="machines taking part (torchrun --nnodes)")
    p.add_argument(
        "--rdzv-endpoint",
        help="HOST:PORT where the machines meet (torchrun --rdzv-endpoint); needed with --nnodes > 1",
    )


def wants_launch(args) -> bool:
    return args.nproc > 1 or args.nnodes > 1


def torchrun_command(args) -> list[str]:
    """The torchrun command line that runs `tunesmith train` on every rank."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc)]
    if args.nnodes > 1 or args.rdzv_endpoint:
        cmd += ["--nnodes", str(args.nnodes), "--rdzv-backend", "c10d"]
        cmd += ["--rdzv-endpoint", args.rdzv_endpoint or "localhost:29400"]
    else:
        cmd += ["--standalone"]  # one machine: a free port, no endpoint to agree on
    train = ["-m", "tunesmith"] + (["--debug"] if args.debug else []) + ["train", args.config]
    return cmd + train + list(args.overrides) + (["--progress"] if args.progress else [])


def launch(args) -> int:
    """Run torchrun and return its exit code."""
    from ..errors import ConfigError

    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise ConfigError(
            f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT (a host every machine can "
            f"reach, e.g. the first machine's address and a free port)"
        )
    if args.nproc < 1 or args.nnodes < 1:
        raise ConfigError(f"--nproc and --nnodes must be >= 1, got {args.nproc}, {args.nnodes}")
    return subprocess.run(torchrun_command(args)).returncode
