from .loop import LoopPosition, TrainResult, train
from .objective import Objective, sft_objective

__all__ = ["LoopPosition", "Objective", "TrainResult", "sft_objective", "train"]
