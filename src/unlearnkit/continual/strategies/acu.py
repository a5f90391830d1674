"""ACU: analytic continual unlearning with a frozen feature extractor and a recursive ridge head.

Tang et al., "Analytic Continual Unlearning for Efficient and Exact Forgetting with Privacy
Preservation" (arXiv 2505.12239, 2025), on the analytic class-incremental learner of Zhuang et al.
(ACIL, NeurIPS 2022). The head is the ridge solution W = (XᵀX + γI)⁻¹XᵀY of the features X and
one-hot labels Y of the learned samples, kept with R = (XᵀX + γI)⁻¹ by recursive least squares:

- learn X:   K = (I + X R Xᵀ)⁻¹, R ← R − R Xᵀ K X R, W ← W + R Xᵀ(Y − X W);
- unlearn X: K = (I − X R Xᵀ)⁻¹, R ← R + R Xᵀ K X R, W ← W − R Xᵀ(Y − X W)  (with the updated R).

Unlearning needs only the forgotten samples, never the retained data, and after any sequence of
requests W equals the ridge solution on exactly the remaining samples (float64).

R is kept as R₀ + L Mᵀ (:class:`InverseGram`): an update appends its low-rank correction and the
correction is folded into R₀ once it holds more than ``fold_rank`` rows. A small request then reads
R₀ once (R₀Xᵀ) instead of rewriting all d² entries of R, which is most of its cost (a one-row
request reads only one triangle of the symmetric R₀); the fold, a rewrite of R₀, happens once every
``fold_rank`` + 1 removed or added rows (``fold_rank=0``: every update). Updates of at most
:data:`SMALL_UPDATE_ROWS` rows take R₀Xᵀ from OpenBLAS with torch on one thread (:func:`one_torch_thread`).

Our addition, for exactness at small γ: the recursion's rounding grows with G = XᵀX + γI's condition number, up
to trace(G)/γ, and a removal amplifies what is already in W by 1/p, p the smallest squared pivot of I − X R Xᵀ's
Cholesky factor (for one row, 1 − x R xᵀ). Measured on split-digits (4000 features, three tasks learned, one
removed), the recursion alone left W 3.6e-10 (relative) off the ridge solution at γ = 1, 1.3e-6 at γ = 0.01 and
1.6e-2 at γ = 1e-4, where two direct solves agree to 1e-7 or better. So ACU also keeps G and B = XᵀY of the learned
rows (:class:`GramMatrix`: exact sums, G's rows pending until R folds). After a fold, and after any update whose
bound ε·trace(G)/(γ·min(p, 1)) passes :data:`DRIFT_LIMIT` (every update at small γ; none at γ = 1 on the digits
scenarios), W is refined by W ← W + R(B − G W) (:meth:`ACU._refine`; each step shrinks W's error by R's relative
error), and when that does not converge (R itself has drifted), R = G⁻¹ and W = R B are recomputed by a Cholesky
factor of G. A removal whose I − X R Xᵀ has no Cholesky factor in float64 is taken from G − XᵀX the same way, and a
request that removes every learned row resets the head to W = 0. G and B are sums over the learned rows, as R is, so
unlearning still needs only the forgotten samples; they double the state's memory.
Until the next fold, the pending corrections hold the last requests' rows, forgotten ones included (R's as
R Xᵀ L⁻ᵀ, G's as the features X themselves); ``fold_rank=0`` folds after every update, so that no forgotten row
outlives its request in the state, at the cost of rewriting R and G each time.

Our choices: with no pre-trained backbone offline, the frozen extractor is ACIL's random "buffer
layer" applied to the pixels, φ(x) = ReLU(x A + c) with A, c seeded Gaussian (``expansion``
features; the default 4000 has the best held-out accuracy of the widths tried, see
:func:`~unlearnkit.continual.cost.acu_width_rows` and the width section of docs/results/continual.md); a sample learned in several tasks counts once per task, and unlearning it removes every
copy; classes not yet seen simply have zero columns (equivalent to ACIL's appended columns).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from scipy.linalg.blas import dgemm, dsymv

from ...errors import UserInputError
from ..scenarios import Scenario, Task
from .base import MASK_VALUE, PluginConfig, Strategy, positive


#: An update of at most this many rows is small ops around R₀Xᵀ, a product bound by reading R₀: it takes R₀Xᵀ
#: from OpenBLAS, which reads R₀ faster than torch's general product here, and runs torch on one thread so that
#: torch's idle threads leave the cores to BLAS. On split-digits this made 2-, 10- and 64-row requests 1.4-1.5 times
#: as fast; larger updates (a learned chunk, a whole task) are large products that torch's threads run faster.
SMALL_UPDATE_ROWS = 64

#: W is refined after an update whose rounding bound ε·trace(G)/(γ·min(p, 1)) passes this (a stream refuses 1e-6,
#: see the runner's ACU_EXACTNESS). The bound overstates the error measured at γ = 1 about a hundredfold; at γ = 1
#: the digits scenarios' single-row bounds stay below 1e-8, so their requests are refined only at folds.
DRIFT_LIMIT = 1e-7
#: A refinement step of at most this times max |W| ends the refinement...
REFINED = 1e-9
#: ... and so does one of at most this that shrank less than half from the step before: the rounding floor of an
#: ill-conditioned G (at γ = 1e-4 with 1000 features two direct solves differ by 8e-8).
FLOOR = 1e-7
#: Refinement steps before R and W are recomputed from G and B instead.
REFINE_STEPS = 4
#: R is recomputed once its measured error, max |R G W − W| / max |W|, passes this (and ten times its floor, what
#: it measured right after the last recomputation): a later update carries R's error into W's change.
R_DRIFT_LIMIT = 1e-7
EPSILON = torch.finfo(torch.float64).eps


@dataclass
class ACUConfig(PluginConfig):
    """Feature width, ridge γ, and the row chunk of each recursive update."""

    expansion: int = 4000
    gamma: float = 1.0
    chunk: int = 512
    fold_rank: int = 64

    def check(self) -> None:
        """Positive width and chunk, a finite γ > 0, a non-negative fold rank."""
        if self.expansion < 1 or not positive(self.gamma) or self.chunk < 1 or self.fold_rank < 0:
            raise UserInputError(f"ACU needs expansion ≥ 1, a finite gamma > 0, chunk ≥ 1 and fold_rank ≥ 0, got {self.expansion}, "
                                 f"{self.gamma}, {self.chunk}, {self.fold_rank}.")
        # R and G are d×d float64 and an update of several chunks keeps copies to put back: a mistyped width (an
        # extra zero) would otherwise fail deep in an allocation, or swap for hours where the allocation succeeds
        needed, memory = 4 * 8 * self.expansion**2, physical_memory()
        if needed > memory:
            raise UserInputError(f"ACU's expansion={self.expansion} needs {needed / 1e9:.1f} GB for R, G and their "
                                 f"copies (4 × 8·d² bytes), more than this machine's {memory / 1e9:.1f} GB; give a smaller "
                                 "expansion.")


def physical_memory() -> int:
    """This machine's memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def ridge_solution(x: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """W = (XᵀX + γI)⁻¹XᵀY, solved directly (the reference ACU must equal)."""
    gram = x.T @ x + gamma * torch.eye(x.shape[1], dtype=x.dtype)
    return torch.linalg.solve(gram, x.T @ y)


class InverseGram:
    """R = (XᵀX + γI)⁻¹ as R₀ + L Mᵀ: updates append low-rank corrections, folded into R₀ past ``fold_rank``."""

    def __init__(self, width: int, gamma: float, fold_rank: int) -> None:
        self.base = torch.eye(width, dtype=torch.float64) / gamma
        self.left = self.base.new_zeros(width, 0)
        self.right = self.base.new_zeros(width, 0)
        self.fold_rank = fold_rank

    def times(self, columns: torch.Tensor) -> torch.Tensor:
        """R · ``columns``."""
        return self._base_times(columns) + self.left @ (self.right.T @ columns)

    def _base_times(self, columns: torch.Tensor) -> torch.Tensor:
        """R₀ · ``columns``: by torch for more than :data:`SMALL_UPDATE_ROWS` columns, else by OpenBLAS. For one
        column, BLAS ``dsymv`` reads one triangle of the symmetric R₀, half the memory of a general product,
        which is what bounds a one-row request (torch has no symmetric product). Both triangles are kept (the
        fold updates all of R₀), so either one is R₀: the lower one, whose columns are contiguous runs in this
        layout, is read 10–20 % faster here than the upper one."""
        if columns.shape[1] > SMALL_UPDATE_ROWS:
            return self.base @ columns
        base = self.base.numpy().T  # C-ordered R₀ viewed transposed: Fortran-ordered, as BLAS wants, and still R₀
        if columns.shape[1] == 1:
            return torch.from_numpy(dsymv(1.0, base, columns[:, 0].numpy(), lower=1)).unsqueeze(1)
        return torch.from_numpy(dgemm(1.0, base, columns.numpy()))

    def add(self, left: torch.Tensor, right: torch.Tensor) -> None:
        """R ← R + left · rightᵀ, kept pending (see :meth:`fold_if_due`)."""
        self.left, self.right = torch.cat([self.left, left], 1), torch.cat([self.right, right], 1)

    def fold_if_due(self) -> bool:
        """Fold the pending correction into R₀ once its rank passes ``fold_rank``; whether it did."""
        due = self.left.shape[1] > self.fold_rank
        if due:
            self.fold()
        return due

    def fold(self) -> None:
        """R₀ ← R₀ + L Mᵀ; no correction pending."""
        self.base.addmm_(self.left, self.right.T)
        self.left, self.right = self.left[:, :0], self.right[:, :0]

    def dense(self) -> torch.Tensor:
        """R as one matrix."""
        return self.base + self.left @ self.right.T


class GramMatrix:
    """G = XᵀX + γI of the learned rows as G₀ + Σ sᵢ xᵢᵀxᵢ over rows added (s = +1) or removed (−1) since the
    last fold: the exact sums that :class:`InverseGram`'s recursion approximates the inverse of."""

    def __init__(self, width: int, gamma: float) -> None:
        self.base = torch.eye(width, dtype=torch.float64) * gamma
        self.rows = self.base.new_zeros(0, width)
        self.signs = self.base.new_zeros(0, 1)

    def add(self, x: torch.Tensor, sign: int) -> None:
        """G ← G + ``sign`` · XᵀX, kept pending."""
        self.rows = torch.cat([self.rows, x])
        self.signs = torch.cat([self.signs, self.signs.new_full((len(x), 1), float(sign))])

    def times(self, columns: torch.Tensor) -> torch.Tensor:
        """G · ``columns``."""
        return self.base @ columns + self.rows.T @ (self.signs * (self.rows @ columns))

    def trace(self) -> float:
        """trace(G), an upper bound on its largest eigenvalue."""
        return float(self.base.diagonal().sum() + (self.signs * self.rows.square()).sum())

    def fold(self) -> None:
        """G₀ ← G; no rows pending."""
        self.base.addmm_(self.rows.T, self.signs * self.rows)
        self.rows, self.signs = self.rows[:0], self.signs[:0]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread inside the block. A small update is small ops around one OpenBLAS product,
    which runs on BLAS's own threads: torch's threads gain nothing there, and while they spin after each op
    they take the cores BLAS needs (a one-row request on 2 cores took 2 to 2.7 times as long with them). Changes the
    process-wide setting for the block's duration, so it is not for several Python threads at once."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class UnstableUpdate(ArithmeticError):
    """I ± X R Xᵀ has no Cholesky factor in float64 (not positive definite to rounding, or not finite)."""


def rls_update(r: InverseGram, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, sign: int) -> float:
    """Add (``sign`` = +1) or remove (−1) the rows ``x`` (labels ``y``) in place; return the smallest pivot of
    I ± X R Xᵀ's Cholesky factor, squared (how ill-conditioned the update was: 1 or more when learning).

    K = (I ± X R Xᵀ)⁻¹, R ← R ∓ R Xᵀ K X R, W ← W ± R Xᵀ(Y − X W) with the updated R. R Xᵀ is
    formed once, the correction of R is kept low-rank (:class:`InverseGram`), and the updated
    R Xᵀ = R Xᵀ ∓ R Xᵀ K X R Xᵀ comes from small matrices.

    The correction is applied as V Vᵀ with V = R Xᵀ L⁻ᵀ, L the Cholesky factor of I ± X R Xᵀ
    (so V Vᵀ = R Xᵀ K X R), which keeps R symmetric to rounding. Applied as R Xᵀ · (K X R), with
    K X R from a solve, a large removal (I − X R Xᵀ is ill-conditioned when most rows go) left R
    asymmetric by ~1e-7, and the next update, which takes X R as (R Xᵀ)ᵀ, turned that into errors
    as large as W itself.
    """
    rx = r.times(x.T.contiguous())
    factor, info = torch.linalg.cholesky_ex(torch.eye(len(x), dtype=x.dtype) + sign * (x @ rx))
    if int(info):
        raise UnstableUpdate()
    v = torch.linalg.solve_triangular(factor, rx.T, upper=False).T  # R Xᵀ L⁻ᵀ
    residual = y - x @ w
    r_new_xt = rx - sign * (v @ (x @ v).T)
    r.add(v, -sign * v)
    w.addmm_(r_new_xt, residual, alpha=sign)
    return float(factor.diagonal().min()) ** 2



class ACU(Strategy):
    """Frozen random features + ridge head learned and unlearned in closed form."""

    name = "acu"
    default_unlearner = "acu"

    def __init__(self, scenario: Scenario, seed: int, config: ACUConfig) -> None:
        super().__init__(scenario, seed)
        self.config = config
        generator = torch.Generator().manual_seed(seed)
        d_in = math.prod(scenario.input_shape)
        self.projection = torch.randn(d_in, config.expansion, generator=generator, dtype=torch.float64) / math.sqrt(d_in)
        self.offset = torch.randn(config.expansion, generator=generator, dtype=torch.float64)
        self.counts: Counter[int] = Counter()
        self._reset_head()

    def _reset_head(self) -> None:
        """The head with nothing learned: W = 0, B = 0, R = I/γ, G = γI."""
        config = self.config
        self.r = InverseGram(config.expansion, config.gamma, config.fold_rank)
        self.gram = GramMatrix(config.expansion, config.gamma)
        self.w = torch.zeros(config.expansion, self.scenario.num_classes, dtype=torch.float64)
        self.b = torch.zeros_like(self.w)
        self.r_floor = 0.0  # R's measured error after the last recomputation (see R_DRIFT_LIMIT)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x) = ReLU(x A + c) in float64."""
        return torch.relu(x.flatten(1).to(torch.float64) @ self.projection + self.offset)

    def targets(self, ids: torch.Tensor) -> torch.Tensor:
        """One-hot labels of the samples ``ids`` (float64)."""
        return torch.nn.functional.one_hot(self.scenario.train_y[ids], self.scenario.num_classes).to(torch.float64)

    def _apply(self, sign: int, ids: torch.Tensor) -> None:
        """Add (``sign`` = +1) or remove (−1) the rows ``ids`` chunk by chunk, all or nothing: a refused chunk puts
        the head back. W is refined after a fold or an update whose rounding bound passes :data:`DRIFT_LIMIT`."""
        chunks = [ids[start : start + self.config.chunk] for start in range(0, len(ids), self.config.chunk)]
        # a single chunk is refused before it changes anything; several need the state before the first
        saved = copy.deepcopy((self.r, self.gram, self.w, self.b, self.r_floor)) if len(chunks) > 1 else None
        try:
            refine = False
            for part in chunks:
                with one_torch_thread() if len(part) <= SMALL_UPDATE_ROWS else contextlib.nullcontext():
                    x, y = self.features(self.scenario.train_x[part]), self.targets(part)
                    # trace(G) before a removal, after a learning: a bound on the larger G's largest eigenvalue
                    rounding = EPSILON * (self.gram.trace() + float(x.square().sum())) / self.config.gamma
                    try:
                        pivot = rls_update(self.r, self.w, x, y, sign)
                    except UnstableUpdate:
                        if sign > 0:
                            raise
                        pivot = None
                    else:
                        self.gram.add(x, sign)
                        self.b.addmm_(x.T, y, alpha=sign)
                if pivot is None:  # outside the block: an O(d³) factorisation wants every thread
                    self._remove_by_recomputation(x, y)
                    continue
                folded = self.r.fold_if_due()  # outside the block: a fold is one large product that wants every thread
                if folded:
                    self.gram.fold()
                refine = refine or folded or rounding / min(pivot, 1.0) > DRIFT_LIMIT
            if refine:
                self._refine()
        except UnstableUpdate:
            if saved is not None:
                self.r, self.gram, self.w, self.b, self.r_floor = saved
            gamma = self.config.gamma
            if sign > 0:  # I + X R Xᵀ ≥ I: only an R = I/γ too large for float64 breaks it (see logits)
                raise UserInputError(f"ACU's scores are not finite with gamma={gamma}; use a larger gamma.") from None
            raise UserInputError(f"ACU cannot unlearn these rows exactly in float64 with gamma={gamma} (XᵀX + γI "
                                 "without them is not positive definite to rounding); use a larger gamma.") from None

    def _refine(self) -> None:
        """Iterative refinement W ← W + R(B − G W) until a step is at most :data:`REFINED` of max |W|, or at most
        :data:`FLOOR` and no longer shrinking. R and W are then recomputed from G and B if R has drifted: when that
        did not happen within :data:`REFINE_STEPS` steps, or when R's measured error passes :data:`R_DRIFT_LIMIT`
        and ten times what it was after the last recomputation (refinement corrects W, not R, whose error enters
        every later update). If G has no Cholesky factor in float64, the head stays as it is: the stream's check
        against a re-solve then judges it."""
        previous = math.inf
        for _ in range(REFINE_STEPS):
            size, r_error = self._refinement_step()
            if size <= REFINED or previous / 2 < size <= FLOOR:
                break
            previous = size
        else:
            r_error = math.inf  # no convergence: R has drifted
        if r_error > max(R_DRIFT_LIMIT, 10 * self.r_floor) and self._recompute():
            self.w = self.r.base @ self.b
            _, self.r_floor = self._refinement_step()

    def _remove_by_recomputation(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Remove the rows ``x`` through G − XᵀX and B − XᵀY when I − X R Xᵀ has no Cholesky factor in float64
        (R has drifted, or γ is small); :class:`UnstableUpdate`, nothing changed, when G − XᵀX has none either."""
        if not self._recompute(removed=x):
            raise UnstableUpdate()
        self.b.addmm_(x.T, y, alpha=-1)
        self.w = self.r.base @ self.b

    def _refinement_step(self) -> tuple[float, float]:
        """One step W ← W + R(B − G W); its largest entry, and R's error max |R G W − W| (taken in the same product
        with R, which reading R bounds), each over max |W|."""
        gw = self.gram.times(self.w)
        step, rgw = self.r.times(torch.cat([self.b - gw, gw], 1)).split(self.w.shape[1], 1)
        scale = max(float(self.w.abs().max()), torch.finfo(torch.float64).tiny)
        r_error = float((rgw - self.w).abs().max()) / scale
        self.w += step
        return float(step.abs().max()) / scale, r_error

    def _recompute(self, removed: torch.Tensor | None = None) -> bool:
        """R = G⁻¹ from a Cholesky factor of G (the primal re-solve, from the sums ACU keeps), less the rows
        ``removed`` (G − XᵀX) if given; whether it had one (if not, G and R are only folded). W is the caller's."""
        self.gram.fold()
        gram = self.gram.base if removed is None else torch.addmm(self.gram.base, removed.T, removed, alpha=-1)
        factor, info = torch.linalg.cholesky_ex(gram)
        if int(info):
            return False
        inverse = torch.cholesky_inverse(factor)
        self.gram.base = gram
        self.r.base = (inverse + inverse.T) / 2  # exactly symmetric: a product with R₀ reads one triangle or both
        self.r.left, self.r.right = self.r.left[:, :0], self.r.right[:, :0]
        return True

    def learn(self, task: Task, ids: torch.Tensor) -> None:
        """Add the task's samples to the ridge head."""
        self._apply(+1, ids)
        self.counts.update(ids.tolist())

    def unlearn(self, task: int | None, ids: set[int]) -> dict[str, Any]:
        """Remove every learned copy of the samples ``ids`` from the ridge head."""
        missing = sorted(i for i in ids if self.counts[i] == 0)
        if missing:
            raise UserInputError(f"ACU cannot unlearn sample {missing[0]}: it is not learned.")
        rows = torch.tensor([i for i in sorted(ids) for _ in range(self.counts[i])], dtype=torch.long)
        if ids >= self.counts.keys():  # nothing learned is left: the ridge solution is exactly W = 0, R = I/γ, not
            # the recursion's rounding residue, whose argmax made the predictions differ from the retrained head's
            self._reset_head()
        else:
            self._apply(-1, rows)
        for i in ids:
            del self.counts[i]
        return {"rows_removed": len(rows)}

    def remaining_ids(self) -> torch.Tensor:
        """Every learned row (a sample learned twice appears twice)."""
        return torch.tensor([i for i in sorted(self.counts) for _ in range(self.counts[i])], dtype=torch.long)

    def resolve(self) -> torch.Tensor:
        """The ridge solution re-solved from all remaining data (features included): the exactness reference."""
        ids = self.remaining_ids()
        return ridge_solution(self.features(self.scenario.train_x[ids]), self.targets(ids), self.config.gamma)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, task: Task | None = None) -> torch.Tensor:
        """Ridge scores φ(x) W (masked to the task's classes when ``task`` is given)."""
        scores = (self.features(x) @ self.w).to(torch.float32)
        if not bool(torch.isfinite(scores).all()):  # R starts at I/γ: a tiny γ makes the head overflow
            raise UserInputError(f"ACU's scores are not finite with gamma={self.config.gamma}; use a larger gamma.")
        if task is not None and self.scenario.setting == "task-il":
            keep = torch.zeros(self.scenario.num_classes, dtype=torch.bool)
            keep[list(task.classes)] = True
            scores = scores.masked_fill(~keep, MASK_VALUE)
        return scores
