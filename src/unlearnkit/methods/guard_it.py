"""GUARD-IT: inference-time unlearning by gated activation redirection (no weight change).

Turani, Parraga et al., "Inference-Time Machine Unlearning via Gated Activation Redirection"
(arXiv 2605.12765, 2026). Offline, the forget texts (question and answer) are clustered (KMeans,
K by silhouette) and each cluster k gets a steering vector at block L (about a quarter of the depth):

    v_k = μ_f,k − (μ_f,kᵀμ_r / ‖μ_r‖²)·μ_r,   rescaled to ‖v_k‖ = (ρ_f,k + ρ_r)/2,

where each text is first mean-pooled over its tokens (the authors' ``token_position: mean``), μ_f,k
is the mean of cluster k's pooled forget texts, μ_r that of the retain texts, and ρ_f,k, ρ_r the
mean norms of those pooled vectors (per cluster, as the authors' ``cluster.py`` computes).
Online, a prompt whose cosine to cluster centroid k exceeds T activates cluster k; with v the mean of the active v_k, every position of block L's output becomes

    h' = (h − α·v) · ‖h‖ / ‖h − α·v‖        (norm-preserving redirection),

and a prompt that activates no cluster passes through untouched.

Choices where the paper is silent or its tools are unavailable:
- Embeddings: the paper gates and clusters with all-MiniLM-L6-v2 text embeddings, which cannot be
  downloaded here. We use the model's own block-L output, mean-pooled over the tokens and centred
  by the mean embedding of the forget and retain items in both views, prompt alone and prompt +
  answer (raw LM states share one dominant direction that makes every cosine close to 1).
  Clustering runs on the unit-normalised whole texts, with 10 k-means++ starts (the authors'
  code: scikit-learn's "auto", one start).
- The gate reads the same block-L output the hook edits, before the edit. In ``generate`` it is
  computed once per prompt, from the prompt tokens (the prefill), and kept for every new token.
  A teacher-forced ``forward`` given ``prompt_mask`` (the adapter passes it: the tokens that are
  not answer labels) gates on those prompt tokens alone, as ``generate`` does, so every candidate
  answer of a question (original, paraphrase, perturbed) is scored under the same decision; without
  it, the gate pools every real token of the input (the "text" view), which is how the authors'
  teacher-forced call gates. Each view (prompt alone,
  prompt + answer) has its own centroids (the cluster means in that view) and its own T,
  calibrated on the forget items (positives) against the retain items (negatives) by maximising
  recall − a·FPR (the paper's criterion, a = ``calibration_penalty``) over the midpoints between
  the observed scores (the authors scan 200 evenly spaced values); ties take the larger T. A
  given ``threshold`` serves both views.
- Defaults: α = 1 (the paper sweeps 0..1), "orthogonal" steering vectors (the paper's default).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..adapters.base import device_of
from ..errors import UserInputError
from ..train.config import OPTIMISER_SETTINGS, TrainConfig
from ._lm_features import block_name, cosine_matrix, first_tensor, masked_mean, pooled_states, replace_first
from .base import Method, Outcome
from .saved import InferenceWrapper


def redirect(hidden: torch.Tensor, vector: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """h' = (h − v)·‖h‖/‖h − v‖ at every position; ``vector`` broadcasts against ``hidden``."""
    shifted = hidden - vector
    scale = hidden.norm(dim=-1, keepdim=True) / shifted.norm(dim=-1, keepdim=True).clamp_min(eps)
    return shifted * scale


def orthogonal_steering(forget_mean: torch.Tensor, retain_mean: torch.Tensor, norm: float) -> torch.Tensor:
    """μ_f − (μ_fᵀμ_r/‖μ_r‖²)μ_r, rescaled to ``norm``."""
    along = (forget_mean @ retain_mean) / retain_mean.square().sum().clamp_min(1e-12)
    vector = forget_mean - along * retain_mean
    return vector * (norm / vector.norm().clamp_min(1e-12))


def cluster_labels(points: torch.Tensor, max_clusters: int, seed: int) -> np.ndarray:
    """KMeans labels with K chosen by silhouette in 2..min(max_clusters, n−1); all zeros when n < 3."""
    n = len(points)
    if n < 3 or max_clusters < 2:
        return np.zeros(n, dtype=int)
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    data = points.double().numpy()
    best: tuple[float, np.ndarray] | None = None
    for k in range(2, min(max_clusters, n - 1) + 1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(data)
        if len(set(labels.tolist())) < 2:
            continue
        score = float(silhouette_score(data, labels))
        if best is None or score > best[0]:
            best = (score, labels)
    if best is None:
        return np.zeros(n, dtype=int)
    return np.unique(best[1], return_inverse=True)[1]  # consecutive labels even if a cluster came out empty


def calibrate_threshold(positive: torch.Tensor, negative: torch.Tensor, penalty: float) -> float:
    """The T maximising mean(positive > T) − penalty·mean(negative > T), over midpoints of the scores."""
    values = torch.cat([positive, negative]).unique().sort().values
    candidates = torch.cat([values[:1] - 1e-6, (values[1:] + values[:-1]) / 2])
    best_t, best_score = float(candidates[0]), -float("inf")
    for t in candidates.tolist():
        score = float((positive > t).float().mean() - penalty * (negative > t).float().mean())
        if score >= best_score:
            best_t, best_score = t, score
    return best_t


class Gate(nn.Module):
    """Which forget clusters a pooled block-L state falls in: centred cosine to a centroid above T.

    Two views with their own centroids and thresholds: ``"prompt"`` (a prompt alone, what
    ``generate`` sees) and ``"text"`` (prompt + answer, what a teacher-forced forward sees).
    """

    VIEWS = ("prompt", "text")

    def __init__(self, center: torch.Tensor, centroids: dict[str, torch.Tensor], thresholds: dict[str, float]) -> None:
        super().__init__()
        self.register_buffer("center", center.float())
        for view in self.VIEWS:
            self.register_buffer(f"{view}_centroids", centroids[view].float())
        # a buffer, not a plain attribute: the calibrated T is state (``state_dict`` saves and restores it)
        self.register_buffer("threshold_values", torch.tensor([float(thresholds[view]) for view in self.VIEWS]))

    @property
    def thresholds(self) -> dict[str, float]:
        """T per view."""
        return dict(zip(self.VIEWS, self.threshold_values.tolist()))

    def scores(self, pooled: torch.Tensor, view: str) -> torch.Tensor:
        """Cosine ``(B, K)`` of centred pooled states to the view's cluster centroids."""
        return cosine_matrix(pooled.float() - self.center, getattr(self, f"{view}_centroids"))

    def active(self, pooled: torch.Tensor, view: str) -> torch.Tensor:
        """Boolean ``(B, K)``: the clusters each row activates."""
        return self.scores(pooled, view) > self.threshold_values[self.VIEWS.index(view)]


class GatedRedirectModel(InferenceWrapper):
    """The original causal LM with a gated, norm-preserving redirection hooked on one block.

    Its ``forward`` and ``generate`` take the base model's arguments and return its outputs; the
    hook lives only for the duration of each call, so the wrapped model is never changed.
    """

    #: The adapter passes ``prompt_mask`` to ``forward`` so the gate reads the prompt alone.
    reads_prompt_mask = True
    method = "guard_it"

    def __init__(self, base: nn.Module, layer_name: str, gate: "Gate", vectors: torch.Tensor, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.layer_name = layer_name
        device = device_of(base)  # the gate and vectors are fitted (or loaded) on the CPU
        self.gate = gate.to(device)
        self.register_buffer("vectors", vectors.float().to(device))
        self.alpha = float(alpha)
        self._mask: torch.Tensor | None = None
        self._view = "text"
        self._freeze = False
        self._frozen: torch.Tensor | None = None

    def settings(self) -> dict[str, Any]:
        """The redirected block's name and α."""
        return {"layer_name": self.layer_name, "alpha": self.alpha}

    @classmethod
    def restore(cls, base: nn.Module, tensors: dict[str, torch.Tensor], settings: dict[str, Any]) -> "GatedRedirectModel":
        """The redirection around ``base`` from its saved gate and steering vectors."""
        gate = Gate(tensors["gate.center"], {view: tensors[f"gate.{view}_centroids"] for view in Gate.VIEWS},
                    dict(zip(Gate.VIEWS, tensors["gate.threshold_values"].tolist())))
        return cls(base, settings["layer_name"], gate, tensors["vectors"], settings["alpha"])

    def steering(self, pooled: torch.Tensor, view: str) -> torch.Tensor:
        """Per row, the mean of the active clusters' vectors (zeros where no cluster is active)."""
        active = self.gate.active(pooled, view).float()
        count = active.sum(dim=1, keepdim=True)
        return (active @ self.vectors) / count.clamp_min(1.0)

    def _row_vectors(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._freeze and self._frozen is not None:
            return self._frozen
        mask = self._mask_for(hidden)
        vectors = self.steering(masked_mean(hidden.float(), mask), self._view)
        if self._freeze:
            self._frozen = vectors
        return vectors

    def _mask_for(self, hidden: torch.Tensor) -> torch.Tensor:
        rows, width = hidden.shape[:2]
        mask = self._mask
        if mask is None:
            return torch.ones(rows, width, dtype=torch.bool, device=hidden.device)
        mask = mask.to(hidden.device).bool()[:, -width:]
        if mask.shape[0] != rows:  # beam search expands each prompt into rows // batch beams
            mask = mask.repeat_interleave(rows // mask.shape[0], dim=0)
        return mask

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        hidden = first_tensor(output)
        vectors = self._row_vectors(hidden)
        gated = vectors.abs().sum(dim=1) > 0
        if not bool(gated.any()):
            return output
        edited = hidden.clone()
        shift = (self.alpha * vectors[gated]).to(hidden.dtype).unsqueeze(1)
        edited[gated] = redirect(hidden[gated], shift)
        return replace_first(output, edited)

    @contextmanager
    def _redirecting(self, gate_mask: torch.Tensor | None, view: str, freeze: bool) -> Iterator[None]:
        self._mask, self._view, self._freeze, self._frozen = gate_mask, view, freeze, None
        handle = dict(self.base.named_modules())[self.layer_name].register_forward_hook(self._hook)
        try:
            yield
        finally:
            handle.remove()
            self._mask, self._view, self._freeze, self._frozen = None, "text", False, None

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                prompt_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The base model's output; the gate pools the ``prompt_mask`` tokens when given, else every real
        token of the input (see the module doc)."""
        gate = (prompt_mask, "prompt") if prompt_mask is not None else (attention_mask, "text")
        with self._redirecting(*gate, freeze=False):
            return self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> Any:
        """The base model's ``generate``, with the gate computed once from the prompt tokens."""
        with self._redirecting(attention_mask, "prompt", freeze=True):
            return self.base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


@dataclass
class GuardITConfig(TrainConfig):
    """``layer`` (block index; None: a quarter of the depth), α, the gate threshold T (None: calibrated),
    a (the FPR weight in the calibration), the largest K tried; ``batch_size`` batches the offline passes."""

    unused = OPTIMISER_SETTINGS
    layer: int | None = None
    alpha: float = 1.0
    threshold: float | None = None
    calibration_penalty: float = 1.0
    max_clusters: int = 20

    def check(self) -> None:
        """Also require α ≥ 0, T in [−1, 1], a ≥ 0 and at least one cluster."""
        super().check()
        if not self.alpha >= 0:
            raise UserInputError(f"GUARD-IT alpha must be a non-negative number, got alpha={self.alpha}.")
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:
            raise UserInputError(f"GUARD-IT threshold is a cosine in [-1, 1], got threshold={self.threshold}.")
        if not self.calibration_penalty >= 0:
            raise UserInputError(f"calibration_penalty must be non-negative, got {self.calibration_penalty}.")
        if not (isinstance(self.max_clusters, int) and self.max_clusters >= 1):
            raise UserInputError(f"max_clusters must be a positive integer, got max_clusters={self.max_clusters}.")


def _views(adapter: Any, model: nn.Module, items: Sequence[Any], layer: str,
           batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled block-L states of the prompts alone and of the whole texts."""
    prompts = pooled_states(adapter, model, items, layer, prompt_only=True, batch_size=batch_size)
    texts = pooled_states(adapter, model, items, layer, prompt_only=False, batch_size=batch_size)
    return prompts, texts


def cluster_vectors(forget_texts: torch.Tensor, labels: np.ndarray, retain_texts: torch.Tensor) -> torch.Tensor:
    """One steering vector per cluster from the pooled texts: μ_f,k made orthogonal to μ_r, rescaled to
    (ρ_f,k + ρ_r)/2, with ρ the mean norm of the pooled vectors."""
    retain_mean, retain_norm = retain_texts.mean(dim=0), float(retain_texts.norm(dim=-1).mean())
    vectors = []
    for k in range(int(labels.max()) + 1):
        members = forget_texts[torch.from_numpy(labels == k)]
        norm = (float(members.norm(dim=-1).mean()) + retain_norm) / 2
        vectors.append(orthogonal_steering(members.mean(dim=0), retain_mean, norm))
    return torch.stack(vectors)


class GuardIT(Method):
    """Steer the residual stream away from forget clusters, only for prompts that look like them."""

    name = "guard_it"
    kinds = ("causal_lm",)
    needs = frozenset({"retain", "hidden_states"})
    paper = "Turani, Parraga et al., Inference-Time Machine Unlearning via Gated Activation Redirection, 2026"
    use_when = 'Inference-time forgetting without weight changes (e.g. a fast, reversible response to a request), when forget prompts are recognisable.'
    Config = GuardITConfig
    lora = False
    edits_weights = False
    gradient_checkpointing = False  # forward passes only

    def unlearn(self, adapter: Any, request, config: GuardITConfig) -> Outcome:
        model, bs = adapter.model, config.batch_size
        layer = block_name(adapter, model, config.layer)
        forget, retain = request.forget_items(), request.retain_items()
        views = {"forget": _views(adapter, model, forget, layer, bs),
                 "retain": _views(adapter, model, retain, layer, bs)}
        center = torch.cat([x for pair in views.values() for x in pair]).mean(dim=0)
        labels = cluster_labels(_unit(views["forget"][1], center), config.max_clusters, config.seed)
        gate, rates = _fit_gate(views, center, labels, config)
        vectors = cluster_vectors(views["forget"][1], labels, views["retain"][1])
        wrapped = GatedRedirectModel(model, layer, gate, vectors, config.alpha).eval()
        info = {"layer": layer, "clusters": len(vectors), "thresholds": dict(gate.thresholds), **rates}
        return Outcome(wrapped, info=info)


def _unit(points: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(points - center, dim=-1)


def _fit_gate(views: dict[str, tuple[torch.Tensor, torch.Tensor]], center: torch.Tensor, labels: np.ndarray,
              config: GuardITConfig) -> tuple[Gate, dict[str, float]]:
    """Per view: cluster centroids of the forget embeddings and a threshold (given, or calibrated)."""
    clusters = [torch.from_numpy(labels == k) for k in range(int(labels.max()) + 1)]
    centroids, thresholds, rates = {}, {}, {}
    for position, view in enumerate(Gate.VIEWS):
        forget = _unit(views["forget"][position], center)
        retain = _unit(views["retain"][position], center)
        centroids[view] = torch.stack([forget[members].mean(dim=0) for members in clusters])
        positive = cosine_matrix(forget, centroids[view]).max(dim=1).values
        negative = cosine_matrix(retain, centroids[view]).max(dim=1).values
        threshold = config.threshold
        if threshold is None:
            threshold = calibrate_threshold(positive, negative, config.calibration_penalty)
        thresholds[view] = threshold
        rates[f"forget_{view}_gate_rate"] = float((positive > threshold).float().mean())
        rates[f"retain_{view}_gate_rate"] = float((negative > threshold).float().mean())
    return Gate(center, centroids, thresholds), rates
