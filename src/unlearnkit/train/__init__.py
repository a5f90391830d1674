"""The one optimisation loop every training-based method uses."""

from .config import TrainConfig, finite_number
from .loop import TrainRecord, optimise, warm_up_step

__all__ = ["TrainConfig", "finite_number", "TrainRecord", "optimise", "warm_up_step"]
