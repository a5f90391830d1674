"""Gradient ascent on the forget set.

The classic baseline, e.g. Thudi et al., "Unrolling SGD: Understanding Factors Influencing Machine
Unlearning" (2022) and Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language
Models" (2023). Update rule: θ ← θ + η ∇_θ L̄(D_f), i.e. minimise −L̄(D_f).
Works on any model kind whose adapter gives a per-item loss.

With ``project="gu"`` (GU, ``train/gu.py``) the ascent step is projected off the span of recent
retain-set gradients, so the request then needs retain data; the retain loss only shapes the
projection (and the optional ``gu_repair`` step), it is not otherwise minimised.
With ``sam_rho`` > 0 the forget term's gradient is taken SAM-style at the worst nearby weights
(``train/sam.py``; Fan et al., ICML 2025), which makes the forgetting harder to relearn.

Optional early stop (off by default): ``early_stop="holdout_nll"`` or ``"holdout_truth_ratio"`` ends the
run once the forget set looks like the request's never-trained holdout items (``train/stopping.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UserInputError
from ..train import optimise
from ..train.gu import LossParts, ProjectionConfig, projector_for
from ..train.sam import SharpnessConfig
from ..train.stopping import StopConfig, stop_for
from ._sampling import SamplingConfig, retain_pairing
from .base import Method, Outcome, item_stream


@dataclass
class GradientAscentConfig(ProjectionConfig, SharpnessConfig, SamplingConfig, StopConfig):
    """Few epochs and a small step: ascent diverges quickly. ``sampling`` pairs retain items only under GU."""

    epochs: int = 1
    lr: float = 1e-4

    def check(self) -> None:
        """Also refuse a sampling other than standard without ``project``: plain ascent reads no retain items."""
        super().check()
        if self.sampling != "standard" and not self.project:
            raise UserInputError(f"gradient_ascent reads retain items only with project=gu; sampling={self.sampling} "
                                 "needs it.")


class GradientAscent(Method):
    """Maximise the loss on the forget set."""

    name = "gradient_ascent"
    kinds = ("classifier", "causal_lm")
    needs = frozenset()
    paper = "Jang et al., Knowledge Unlearning for Mitigating Privacy Risks in Language Models, 2023"
    use_when = 'A quick sanity baseline needing only the forget set; it overshoots easily, so keep epochs and lr small (or add --project gu).'
    Config = GradientAscentConfig

    def unlearn(self, adapter: Any, request, config: GradientAscentConfig) -> Outcome:
        projector = projector_for(config)
        if projector is not None:
            return self._projected(adapter, request, config, projector)
        stream, steps = item_stream(adapter, request.forget_items(), config)
        loss = lambda model, batch: -adapter.per_item_loss(model, batch).mean()
        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps, description="gradient ascent",
                          stop=stop_for(config, adapter, request, steps))
        return Outcome(adapter.model, record)

    def _projected(self, adapter: Any, request, config: GradientAscentConfig, projector) -> Outcome:
        """Gradient ascent with GU: forget batches paired with retain batches that define the projection."""
        if not request.retain:
            raise UserInputError("gradient_ascent with project='gu' needs retain data, but the request has none.")
        stream, steps = retain_pairing(adapter, request, config)

        def loss(model, batch: dict) -> LossParts:
            forget = -adapter.per_item_loss(model, batch["forget"]).mean()
            return LossParts(forget, adapter.per_item_loss(model, batch["retain"]).mean())

        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps,
                          description="gradient ascent (GU)", projector=projector,
                          stop=stop_for(config, adapter, request, steps))
        return Outcome(adapter.model, record)
