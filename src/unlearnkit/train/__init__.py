"""The one optimisation loop every training-based method uses."""

from .config import TrainConfig
from .loop import TrainRecord, optimise, warm_up_step

__all__ = ["TrainConfig", "TrainRecord", "optimise", "warm_up_step"]
