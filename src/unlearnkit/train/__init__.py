"""The one optimisation loop every training-based method uses."""

from .config import TrainConfig
from .loop import TrainRecord, optimise

__all__ = ["TrainConfig", "TrainRecord", "optimise"]
