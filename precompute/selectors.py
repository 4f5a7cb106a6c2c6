"""Model-selection strategies (paper section 4.2): which expert to use for a task.

One class per selector, registered by name (``@register``); :func:`create` makes one. Every
selector has the same surface, as scikit-learn's estimators do:

- ``fit(experts, training)`` learns from the training tasks (their embeddings, the
  performance matrix and each task's candidate experts) and returns the fitted selector;
  selectors that learn nothing return themselves;
- ``score(experts, tasks)`` -> ``[E, T]`` scores, higher = better; the ranking is the
  candidates by descending score, ties in a seeded random order;
- ``state()`` / ``from_library(selection, bias)``: what a fitted selector keeps in the
  library file (``library_info.selection``, the ``model2vec`` table), so that
  :func:`precompute.selection.rank_experts` scores a new task with the state ``evaluate`` fitted.

``evaluate`` (cross-validated Table 1), ``rank_experts`` (a new task) and, through it, the
app's upload page all go through this registry. Adding a selector is one class here.

=================  ==========================================================================
``chance``         a uniformly random expert (Table 1's "Chance"; its metrics are the exact
                   expectation over uniform picks)
``imagenet``       always the generic ImageNet expert (then random)
``task2vec``       -d_sym(expert's training task, task)                       (section 3.3);
                   the ImageNet expert, whose task is unknown, comes last
``task2vec_asym``  -d_asym(expert -> task), alpha chosen on the training tasks (section 3.3);
                   ImageNet last, as for ``task2vec``
``model2vec``      -d_asym(m_i -> task), m_i = F_i * exp(b_i), b_i learned with the k-way
                   cross-entropy of section 3.4 on the training tasks
``logme``          LogME (You et al. 2021) of the expert's features on the task's train split
``knn``            leave-one-out 5-NN accuracy of the expert's features on the train split
``hscore``         H-score (Bao et al. 2019) of the expert's features on the train split
``leep``           LEEP (Nguyen et al. 2020): log-likelihood of the task's labels through the
                   expert's source heads and the empirical conditional of label given source label
``nce``            NCE (Tran et al. 2019): negative conditional entropy of the task's labels
                   given the expert's source-head predictions
``static_prior``   the expert's mean rank on the training tasks, the same for every task: the
                   honesty baseline every task-aware selector must beat
=================  ==========================================================================

Model2Vec: the paper writes m_i = F_i + b_i; here the bias lives in log-Fisher coordinates,
m_i = F_i * exp(b_i), which keeps m_i positive as d_sym needs. To make the cross-validated fits
take seconds on a CPU, m_i and the distances use the ``MODEL2VEC_FILTERS`` filters whose
log-Fisher varies most across the training tasks (the same subset at training and at query
time; recorded in ``library_info.selection.model2vec.filters``); b_i = 0 elsewhere.

The five transfer scores are computed by the matrix stage (:mod:`precompute.transfer`,
``feature_scores``), all higher = better, as their papers define them; a library file made
before a score existed lacks its column, and ``evaluate`` skips that selector and says so.

Metrics, per task, over its candidate experts (:func:`task_metrics`); ``evaluate`` averages
them over tasks and seeds and bootstraps the mean over tasks:

- relative error increase (Table 1): err(picked) / err(best) - 1. Errors are smoothed to
  (mistakes + 0.5) / (n_test + 1) first, since a best error of 0 (easy tasks with a few test
  images) would make the ratio infinite; ``ratio_of_means`` is the unsmoothed mean error of the
  picks / mean best error - 1;
- regret: err(picked) - err(best), unsmoothed, in error units (x 100: error points);
- top-1 / top-3: the best candidate is the pick / among the first three;
- weighted Kendall tau (:func:`weighted_tau`): ``scipy.stats.weightedtau(score, -error)`` with
  its defaults (additive hyperbolic weigher 1 / (r + 1), ranks averaged over both orders), as
  LogME and SFDA report it: +1 when the scores order the candidates as their test accuracy
  does, 0 for an unrelated order, the best experts weighted most.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from . import distances
from .errors import Task2VecError

ALPHAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
MODEL2VEC_FILTERS = 512
MODEL2VEC_STEPS = 150
MODEL2VEC_LR = 0.05
MODEL2VEC_L2 = 1e-2


# ----------------------------------------------------------------------------------------------
# what a selector sees


@dataclass
class Experts:
    """The candidate models, in a fixed order.

    Attributes:
        ids: expert ids.
        values: ``[E, D]`` the experts' task embeddings F_i.
        trivial_level: the isotropic trivial embedding's value.
        complexity: ``[E]`` d_sym(F_i, trivial) (:func:`distances.complexity`).
        imagenet: index of the ImageNet expert, -1 if absent.
        unknown: indices of the other experts whose training task is unknown (a user's model
            added without ``--trained-on``): their ``values`` are the trivial embedding.
    """

    ids: list[str]
    values: np.ndarray
    trivial_level: float
    complexity: np.ndarray
    imagenet: int = -1
    unknown: tuple[int, ...] = ()

    @property
    def task_unknown(self) -> np.ndarray:
        """bool ``[E]``: the expert's training task is unknown (ImageNet's, and ``unknown``)."""
        out = np.zeros(len(self.ids), dtype=bool)
        out[list(self.unknown)] = True
        if self.imagenet >= 0:
            out[self.imagenet] = True
        return out


@dataclass
class Tasks:
    """The tasks to score: ``values`` ``[T, D]`` Fisher embeddings, ``dsym`` ``[E, T]``
    d_sym(expert, task); ``logme`` ... ``nce`` ``[E, T]`` the forward-pass transfer scores where
    known (a field per :class:`_TransferScore` selector, named as it is).
    ``rng``: where ``chance`` draws its scores from (None: all zero, ties broken by the caller)."""

    values: np.ndarray
    dsym: np.ndarray
    logme: np.ndarray | None = None
    knn: np.ndarray | None = None
    hscore: np.ndarray | None = None
    leep: np.ndarray | None = None
    nce: np.ndarray | None = None
    rng: np.random.Generator | None = None


@dataclass
class Training:
    """The training tasks of a fit: ``tasks`` (as scored), ``errors`` ``[E, T]`` test errors,
    ``n_test`` ``[T]``, ``candidates`` bool ``[E, T]`` (the experts that compete for a task)."""

    tasks: Tasks
    errors: np.ndarray
    n_test: np.ndarray
    candidates: np.ndarray


# ----------------------------------------------------------------------------------------------
# metrics (Table 1); also the criterion alpha is chosen by


def smoothed(errors: np.ndarray, n_test: np.ndarray) -> np.ndarray:
    """(mistakes + 0.5) / (n_test + 1): keeps err(picked) / err(best) finite when best is 0."""
    return (errors * n_test + 0.5) / (n_test + 1)


def relative_error_increase(picked: np.ndarray, best: np.ndarray) -> np.ndarray:
    """err(picked) / err(best) - 1, per task (Table 1; 0 = the best expert was picked)."""
    return picked / best - 1.0


def regret(picked: np.ndarray, best: np.ndarray) -> np.ndarray:
    """err(picked) - err(best), unsmoothed, per task (error units; 0 = the best was picked)."""
    return picked - best


def weighted_tau(scores: np.ndarray, errors: np.ndarray) -> float:
    """Weighted Kendall tau between a selector's scores of one task's candidates (higher =
    better) and their test errors (lower = better): ``scipy.stats.weightedtau(scores, -errors)``
    with scipy's defaults, as in the LogME / SFDA benchmarks (additive hyperbolic weigher: an
    exchange of the elements ranked r and s weighs 1 / (r + 1) + 1 / (s + 1); the ranks
    averaged over the order by score and the order by accuracy). +1: the scores order the
    candidates as their accuracy does. NaN when every score or every error ties (no order to
    compare: e.g. all candidates make no test error)."""
    from scipy.stats import weightedtau

    scores, errors = np.asarray(scores, float), np.asarray(errors, float)
    if len(scores) < 2 or np.ptp(scores) == 0 or np.ptp(errors) == 0:
        return float("nan")
    return float(weightedtau(scores, -errors).statistic)


def task_metrics(rankings: list[np.ndarray], errors: np.ndarray, n_test: np.ndarray,
                 candidates: np.ndarray, tasks: np.ndarray,
                 scores: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per task of ``tasks`` (arrays in that order): ``rel`` (relative error increase, smoothed
    errors), ``regret``, ``top1``, ``top3``, ``picked`` / ``best`` (raw errors) and, given the
    selector's ``[E, T]`` scores (columns in the order of ``tasks``), ``tau``."""
    err_s = smoothed(errors, n_test[None])
    out = {k: [] for k in ("rel", "regret", "top1", "top3", "picked", "best", "tau")}
    for col, (j, ranking) in enumerate(zip(tasks, rankings)):
        cand = np.flatnonzero(candidates[:, j])
        best = errors[cand, j].min()
        out["rel"].append(relative_error_increase(err_s[ranking[0], j], err_s[cand, j].min()))
        out["regret"].append(regret(errors[ranking[0], j], best))
        out["top1"].append(errors[ranking[0], j] <= best + 1e-12)
        out["top3"].append(errors[ranking[:3], j].min() <= best + 1e-12)
        out["picked"].append(errors[ranking[0], j])
        out["best"].append(best)
        out["tau"].append(float("nan") if scores is None
                          else weighted_tau(scores[cand, col], errors[cand, j]))
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def summarise(per_task: dict[str, np.ndarray]) -> dict:
    """Means over tasks of :func:`task_metrics` (tau over the tasks where it is defined) and
    the ratio of means."""
    tau = per_task["tau"]
    return {"rel": float(np.mean(per_task["rel"])), "top1": float(np.mean(per_task["top1"])),
            "top3": float(np.mean(per_task["top3"])), "regret": float(np.mean(per_task["regret"])),
            "tau": float(np.nanmean(tau)) if np.isfinite(tau).any() else float("nan"),
            "ratio_of_means": float(np.mean(per_task["picked"]) /
                                    max(np.mean(per_task["best"]), 1e-12) - 1)}


def metrics(rankings: list[np.ndarray], errors: np.ndarray, n_test: np.ndarray,
            candidates: np.ndarray, tasks: np.ndarray, scores: np.ndarray | None = None) -> dict:
    """Means over ``tasks``: relative error increase, top-1/top-3 hit rates, regret, weighted
    tau (given ``scores``) and the ratio of means."""
    return summarise(task_metrics(rankings, errors, n_test, candidates, tasks, scores))


def rankings_from_scores(scores: np.ndarray, candidates: np.ndarray,
                         rng: np.random.Generator) -> list[np.ndarray]:
    """Per task (column): candidate expert indices, best first; ties in a seeded random order."""
    out = []
    for j in range(scores.shape[1]):
        cand = np.flatnonzero(candidates[:, j])
        tie = rng.permutation(len(cand))
        order = np.lexsort((tie, -scores[cand, j]))
        out.append(cand[order])
    return out


# ----------------------------------------------------------------------------------------------
# the interface and the registry


class Selector:
    """Scores experts for tasks; see the module docstring."""

    name: ClassVar[str]
    needs_features: ClassVar[bool] = False  # needs the task's images through every expert
    learned: ClassVar[bool] = False  # fitted on training tasks (rank_experts needs evaluate)

    def fit(self, experts: Experts, training: Training) -> "Selector":
        return self

    def score(self, experts: Experts, tasks: Tasks) -> np.ndarray:
        raise NotImplementedError

    def metrics(self, rankings, scores, errors, n_test, candidates, tasks) -> dict:
        """Per-task metrics (:func:`task_metrics`) of this selector's rankings and ``[E, T]``
        scores of ``tasks``."""
        return task_metrics(rankings, errors, n_test, candidates, tasks, scores)

    def state(self) -> dict:
        """The fitted state kept in ``library_info.selection`` (learned selectors)."""
        return {}

    @classmethod
    def from_library(cls, selection: dict | None, bias: np.ndarray | None) -> "Selector":
        """The selector as ``evaluate`` fitted it on all tasks of a library file
        (``selection``: ``library_info.selection``; ``bias``: ``[E, D]`` Model2Vec biases)."""
        return cls()


def _evaluated(name: str, selection: dict | None) -> dict:
    if not selection:
        raise Task2VecError(f"selector {name!r} is learned: run python -m precompute evaluate first")
    return selection


REGISTRY: dict[str, type[Selector]] = {}


def register(cls: type[Selector]) -> type[Selector]:
    REGISTRY[cls.name] = cls
    return cls


def create(name: str, **options) -> Selector:
    if name not in REGISTRY:
        raise Task2VecError(f"unknown selector {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name](**options)


def unknown_last(scores: np.ndarray, experts: Experts) -> np.ndarray:
    """The TASK2VEC distance selectors pick "the expert trained on the most similar task"
    (section 4.2, strategy 1); the experts whose task is unknown (ImageNet's, a user's model
    added without its training task) cannot be ranked that way, so they come after every
    expert whose task is known, tied (Model2Vec instead learns where to put them, from
    F = 0)."""
    unknown = experts.task_unknown
    if unknown.any() and not unknown.all():
        scores = scores.copy()
        floor = scores[~unknown].min(0)
        scores[unknown] = floor - 1.0
    return scores


# ----------------------------------------------------------------------------------------------
# the selectors (Table 1's rows, in its order)


@register
class Chance(Selector):
    name = "chance"

    def score(self, experts, tasks):
        shape = (len(experts.ids), tasks.values.shape[0])
        return np.zeros(shape) if tasks.rng is None else tasks.rng.random(shape)

    def metrics(self, rankings, scores, errors, n_test, candidates, tasks):
        """Exact expectations for a uniformly random pick among the candidates (relative error
        increase, regret, top-1, top-3). Weighted tau is that of the random scores drawn (one
        draw per task and seed): its expectation is 0 where no errors tie, but not exactly
        with ties (scipy breaks them by the other order: +0.029 measured over 20,000 random
        orders of 12 experts with five tied groups), so it is measured, not assumed."""
        err_s = smoothed(errors, n_test[None])
        out = {k: [] for k in ("rel", "regret", "top1", "top3", "picked", "best", "tau")}
        for col, j in enumerate(tasks):
            cand = np.flatnonzero(candidates[:, j])
            k = len(cand)
            best = errors[cand, j].min()
            hits = int((errors[cand, j] <= best + 1e-12).sum())
            out["rel"].append(float(np.mean(err_s[cand, j] / err_s[cand, j].min() - 1)))
            out["regret"].append(float(np.mean(errors[cand, j]) - best))
            out["top1"].append(hits / k)
            out["top3"].append(1.0 if k <= 3 else 1 - math.comb(k - hits, 3) / math.comb(k, 3))
            out["picked"].append(errors[cand, j].mean())
            out["best"].append(best)
            out["tau"].append(float("nan") if scores is None
                              else weighted_tau(scores[cand, col], errors[cand, j]))
        return {k: np.asarray(v, dtype=float) for k, v in out.items()}


@register
class ImageNet(Selector):
    name = "imagenet"

    def score(self, experts, tasks):
        s = np.zeros((len(experts.ids), tasks.values.shape[0]))
        if experts.imagenet >= 0:
            s[experts.imagenet] = 1.0
        return s


@register
class Task2Vec(Selector):
    name = "task2vec"

    def score(self, experts, tasks):
        return unknown_last(-tasks.dsym, experts)


def choose_alpha(dsym: np.ndarray, complexity: np.ndarray, errors: np.ndarray, n_test: np.ndarray,
                 candidates: np.ndarray) -> float:
    """The alpha of ``ALPHAS`` whose d_asym picks give the least mean relative error increase on
    the given tasks (ties: the one nearest the paper's 0.15)."""
    scores = []
    tasks = np.arange(errors.shape[1])
    for alpha in ALPHAS:
        d = distances.asymmetric_from_symmetric(dsym, complexity, alpha)
        d = np.where(candidates, d, np.inf)
        picks = [np.array([d[:, j].argmin()]) for j in tasks]
        scores.append(task_metrics(picks, errors, n_test, candidates, tasks)["rel"].mean())
    scores = np.round(scores, 12)
    best = min(range(len(ALPHAS)), key=lambda i: (scores[i], abs(ALPHAS[i] - 0.15)))
    return float(ALPHAS[best])


@register
class Task2VecAsym(Selector):
    name = "task2vec_asym"
    learned = True

    def __init__(self, alpha: float | None = None):
        self.alpha = alpha

    def fit(self, experts, training):
        self.alpha = choose_alpha(training.tasks.dsym, experts.complexity, training.errors,
                                  training.n_test, training.candidates)
        return self

    def score(self, experts, tasks):
        d = distances.asymmetric_from_symmetric(tasks.dsym, experts.complexity, self.alpha)
        return unknown_last(-d, experts)

    def state(self):
        return {"alpha": self.alpha}

    @classmethod
    def from_library(cls, selection, bias):
        return cls(_evaluated(cls.name, selection)["alpha"])


@dataclass
class Model2Vec:
    """Learned model embeddings m_i = F_i * exp(b_i) on a subset of filters.

    Attributes:
        filters: int ``[K]`` filter indices the distances use.
        bias: float32 ``[E, K]`` b_i (log units), in the experts' order.
        scale: logit scale s of p(m_i | t) = softmax_i(-s * d_asym(m_i -> t)).
        alpha: the asymmetric distance's alpha.
    """

    filters: np.ndarray
    bias: np.ndarray
    scale: float
    alpha: float
    loss: float = float("nan")

    def distances(self, expert_values: np.ndarray, task_values: np.ndarray,
                  trivial_level: float) -> np.ndarray:
        """``[E, T]`` d_asym(m_i -> t) on the filter subset."""
        import torch

        m = torch.from_numpy(expert_values[:, self.filters].astype(np.float64) *
                             np.exp(self.bias.astype(np.float64)))
        t = torch.from_numpy(np.atleast_2d(task_values)[:, self.filters].astype(np.float64))
        t0 = torch.full_like(m, float(trivial_level))
        return distances.asymmetric_torch(m, t, t0, self.alpha).numpy()


def fit_model2vec(expert_values: np.ndarray, task_values: np.ndarray, errors: np.ndarray,
                  candidates: np.ndarray, trivial_level: float, alpha: float, *,
                  filters: int = MODEL2VEC_FILTERS, steps: int = MODEL2VEC_STEPS,
                  lr: float = MODEL2VEC_LR, l2: float = MODEL2VEC_L2, seed: int = 0) -> Model2Vec:
    """Learn the model biases b_i by the k-way cross-entropy of predicting each task's best
    expert (among its candidates) from -s * d_asym(m_i -> t) (paper section 3.4).

    Args:
        expert_values: ``[E, D]`` the experts' task embeddings F_i.
        task_values: ``[T, D]`` the training tasks' embeddings.
        errors: ``[E, T]`` test errors (the performance matrix).
        candidates: bool ``[E, T]``, which experts compete for each task.
        l2: weight of mean(b^2), which keeps m_i near F_i where the data say nothing.
    Full-batch Adam from b = 0: nothing is random (``seed`` is only recorded).
    """
    import torch

    log_t = np.log(np.maximum(task_values, 1e-30))
    k = min(filters, task_values.shape[1])
    chosen = np.sort(np.argsort(-log_t.var(0), kind="stable")[:k])
    fe = torch.from_numpy(expert_values[:, chosen].astype(np.float64))
    ft = torch.from_numpy(task_values[:, chosen].astype(np.float64))
    cand = torch.from_numpy(candidates)
    masked = np.where(candidates, errors, np.inf)
    usable = (candidates.sum(0) >= 2)
    best = torch.from_numpy(masked.argmin(0))
    b = torch.zeros_like(fe, requires_grad=True)
    t0 = torch.full_like(fe, float(trivial_level))
    with torch.no_grad():
        d0 = distances.asymmetric_torch(fe, ft, t0, alpha)
        spread = float(d0[cand].std()) if cand.any() else 1.0
    log_s = torch.tensor(math.log(1.0 / max(spread, 1e-6)), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([b, log_s], lr=lr)
    use = torch.from_numpy(usable)
    loss_value = float("nan")
    if use.any():
        for _ in range(steps):
            m = fe * b.exp()
            d = distances.asymmetric_torch(m, ft, t0, alpha)
            logits = (-log_s.exp() * d).masked_fill(~cand, float("-inf")).T  # [T, E]
            loss = torch.nn.functional.cross_entropy(logits[use], best[use]) + l2 * b.square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
    return Model2Vec(chosen, b.detach().numpy().astype(np.float32), float(log_s.detach().exp()),
                     alpha, loss_value)


@register
class Model2VecSelector(Selector):
    name = "model2vec"
    learned = True

    def __init__(self, model: Model2Vec | None = None, *, seed: int = 0, **options):
        self.model, self.seed, self.options = model, seed, options

    def fit(self, experts, training):
        # the alpha task2vec_asym would choose on the same tasks
        alpha = choose_alpha(training.tasks.dsym, experts.complexity, training.errors,
                             training.n_test, training.candidates)
        self.model = fit_model2vec(experts.values, training.tasks.values, training.errors,
                                   training.candidates, experts.trivial_level, alpha,
                                   seed=self.seed, **self.options)
        return self

    def score(self, experts, tasks):
        return -self.model.distances(experts.values, tasks.values, experts.trivial_level)

    def state(self):
        m = self.model
        return {"filters": m.filters.tolist(), "scale": m.scale, "alpha": m.alpha,
                "loss": m.loss, "bias": "log-Fisher units: m_i = F_i * exp(b_i)",
                "steps": MODEL2VEC_STEPS, "lr": MODEL2VEC_LR, "l2": MODEL2VEC_L2}

    @classmethod
    def from_library(cls, selection, bias):
        _evaluated(cls.name, selection)
        if bias is None:
            raise Task2VecError("the Model2Vec biases are missing: run python -m precompute evaluate")
        m2v = selection["model2vec"]
        filters = np.asarray(m2v["filters"])
        return cls(Model2Vec(filters, bias[:, filters], m2v["scale"], m2v["alpha"]))


class _TransferScore(Selector):
    """Ranks by a forward-pass score of the expert's features on the task's train split
    (:mod:`precompute.transfer`), stored per (expert, task) by the matrix stage in
    ``feature_scores.<column>`` (its cost in ``<seconds_column>``, plus ``feature_seconds``);
    the ``Tasks`` field of the selector's name holds it. Higher = better."""

    needs_features = True
    column: ClassVar[str]
    seconds_column: ClassVar[str]

    def score(self, experts, tasks):
        return getattr(tasks, self.name)


@register
class LogME(_TransferScore):
    name, column, seconds_column = "logme", "logme", "logme_seconds"


@register
class KNN(_TransferScore):
    name, column, seconds_column = "knn", "knn_accuracy", "knn_seconds"


@register
class HScore(_TransferScore):
    name, column, seconds_column = "hscore", "hscore", "hscore_seconds"


@register
class LEEP(_TransferScore):
    name, column, seconds_column = "leep", "leep", "leep_seconds"


@register
class NCE(_TransferScore):
    name, column, seconds_column = "nce", "nce", "nce_seconds"


def mean_ranks(errors: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Each expert's mean normalised rank (0 best, 1 worst) over the tasks it competes on."""
    e, t = errors.shape
    total, count = np.zeros(e), np.zeros(e)
    for j in range(t):
        cand = np.flatnonzero(candidates[:, j])
        if len(cand) < 2:
            continue
        order = cand[np.argsort(errors[cand, j], kind="stable")]
        ranks = np.empty(len(cand))
        ranks[np.searchsorted(cand, order)] = np.arange(len(cand)) / (len(cand) - 1)
        # ties share their mean rank
        for v in np.unique(errors[cand, j]):
            same = errors[cand, j] == v
            ranks[same] = ranks[same].mean()
        total[cand] += ranks
        count[cand] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.5)


@register
class StaticPrior(Selector):
    name = "static_prior"
    learned = True

    def __init__(self, prior: np.ndarray | None = None, ids: list[str] | None = None):
        self.prior, self.ids = prior, ids  # [E] mean normalised rank, lower = better

    def fit(self, experts, training):
        self.prior, self.ids = mean_ranks(training.errors, training.candidates), list(experts.ids)
        return self

    def score(self, experts, tasks):
        prior = self.prior if self.ids == list(experts.ids) else np.array(
            [dict(zip(self.ids, self.prior)).get(i, 0.5) for i in experts.ids])
        return np.repeat(-prior[:, None], tasks.values.shape[0], axis=1)

    def state(self):
        return dict(zip(self.ids, map(float, self.prior)))

    @classmethod
    def from_library(cls, selection, bias):
        prior = _evaluated(cls.name, selection)["static_prior"]
        return cls(np.array(list(prior.values()), dtype=float), list(prior))


SELECTORS = tuple(REGISTRY)
EMBEDDING_SELECTORS = tuple(n for n, c in REGISTRY.items() if not c.needs_features)
TRANSFER_SELECTORS = tuple(n for n, c in REGISTRY.items() if issubclass(c, _TransferScore))
