"""UER: learn new samples by the angle only, replay with norm and angle.

Lin et al., "UER: A Heuristic Bias Addressing Approach for Online Continual Learning" (arXiv
2309.04081, 2023). Writing the logit as z_c = ‖w_c‖‖h‖cos θ_c, the new samples are trained on
the cosine logits only and the buffer samples on the full dot-product logits:
L = CE(s · cos(h(x_B), W), y_B) + CE(Wᵀh(x_M) + b, y_M), with x_M from a reservoir buffer
(:class:`.er.ER`). Prediction uses the dot-product logits.

Our choices where the paper's code is not public: the cosine logits use no bias and a fixed scale
s = 16; everything else is ER's (buffer, reservoir, purging on unlearning). UER is an online
(single-pass) method; here it trains the learners' ``epochs`` passes over each task, as every
strategy of the sweep does, and offers each task's samples to the reservoir once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ...errors import UserInputError
from .base import positive
from .er import ER, ERConfig


@dataclass
class UERConfig(ERConfig):
    """ER's settings plus the cosine-logit scale s."""

    uer_scale: float = 16.0

    def check(self) -> None:
        """ER's checks and a finite s > 0."""
        super().check()
        if not positive(self.uer_scale):
            raise UserInputError(f"UER needs a finite uer_scale > 0, got {self.uer_scale}.")


class UER(ER):
    """Reservoir replay whose current-batch loss sees only the angle between features and class weights."""

    name = "uer"
    paper = "Lin et al., UER: A Heuristic Bias Addressing Approach for Online Continual Learning, 2023"
    Config = UERConfig

    def current_logits(self, learner, model, batch):
        """s · cos(h, w_c) for every class c."""
        _, features = model(batch["x"], return_features=True)
        weight = learner.model.head.weight
        return self.config.uer_scale * F.normalize(features, dim=1) @ F.normalize(weight, dim=1).T
