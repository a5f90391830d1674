"""NPO+SAM: NPO whose forget term is minimised sharpness-aware, to resist relearning.

Fan et al., "Towards LLM Unlearning Resilient to Relearning Attacks: A Sharpness-Aware Minimization
Perspective and Beyond" (ICML 2025; arXiv 2502.05374). Relearning attacks (fine-tuning the unlearned
model on a few forget items) undo unlearning that left the forget loss in a sharp basin; the paper
casts robust unlearning as a min-max problem whose one-step solution is SAM on the forget loss. With
NPO's forget loss ℓ_f (methods/npo.py), its retain term R and radius ρ, each step uses

    ε = ρ·∇ℓ_f(θ) / ‖∇ℓ_f(θ)‖,   g = γ·∇ℓ_f(θ + ε) + α·∇R(θ).

Choices: everything but ρ is NPO's (β = 0.1, γ = α = 1, retain NLL); ρ = 0.01 is the default of the
authors' MUSE code (their WMDP config uses 0.1, both for 7B models at lr 1e-5), so small models usually
want more (the facts bench uses the ρ its rule selects on a held-out world). NPO's forget loss here is
the paper's, on each answer's summed NLL; the authors' WMDP code feeds it the batch's token-mean NLL,
which on long documents saturates the sigmoid far later, so their WMDP numbers need not carry over. ε spans all trainable parameters with one global norm (``train/sam.py``).
The same smoothing is available on gradient_ascent, graddiff, npo and simnpo as ``sam_rho``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .npo import NPO, NPOConfig


@dataclass
class SAMNPOConfig(NPOConfig):
    """NPO's settings with SAM's radius ρ on the forget term switched on."""

    sam_rho: float = 0.01


class SAMNPO(NPO):
    """NPO with the forget gradient taken at the worst weights within radius ρ."""

    name = "sam_npo"
    paper = ("Fan et al., Towards LLM Unlearning Resilient to Relearning Attacks: A Sharpness-Aware Minimization "
             "Perspective and Beyond, 2025")
    use_when = ("When the forgetting must survive a relearning attack (fine-tuning on part of the forget set); "
                "about twice NPO's time per step.")
    Config = SAMNPOConfig
