"""train.distributed: how a run launched with torchrun shares the work between its processes."""

from dataclasses import dataclass

from ..errors import ConfigError
from .fields import check_choice, opt


@dataclass
class DistributedConfig:
    """torch.distributed settings; used when the run is launched with torchrun (WORLD_SIZE > 1)."""

    strategy: str = opt(
        "auto",
        "ddp (replicated model, gradients all-reduced once per optimizer step), fsdp "
        "(parameters, gradients and optimizer state sharded with FSDP2 fully_shard) or auto (ddp)",
    )
    backend: str = opt(
        "auto", "process-group backend: gloo, nccl or auto (nccl for a model on a GPU, else gloo)"
    )
    timeout: float = opt(
        600.0,
        "seconds a rank waits for the others in a collective before the run stops with an error "
        "(a rank that failed or stalled)",
    )
    threads: int = opt(
        0, "torch threads per rank; 0 = the machine's cores divided by the ranks on this machine"
    )

    def __post_init__(self):
        check_choice("train.distributed.strategy", self.strategy, ("auto", "ddp", "fsdp"))
        check_choice("train.distributed.backend", self.backend, ("auto", "gloo", "nccl"))
        if self.timeout <= 0 or self.threads < 0:
            raise ConfigError(
                f"train.distributed.timeout must be > 0 and train.distributed.threads >= 0, got "
                f"{self.timeout}, {self.threads}"
            )
