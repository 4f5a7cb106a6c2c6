"""Model selection (paper section 4.2, Table 1): which expert to use for a task.

Every selector scores the experts for a task, higher = better; its ranking is the experts by
descending score (ties broken by a seeded random order).

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
``static_prior``   the expert's mean rank on the training tasks, the same for every task: the
                   honesty baseline every task-aware selector must beat
=================  ==========================================================================

Model2Vec: the paper writes m_i = F_i + b_i; here the bias lives in log-Fisher coordinates,
m_i = F_i * exp(b_i), which keeps m_i positive as d_sym needs. To make the cross-validated fits
take seconds on a CPU, m_i and the distances use the ``MODEL2VEC_FILTERS`` filters whose
log-Fisher varies most across the training tasks (the same subset at training and at query
time; recorded in ``library_info.selection.model2vec.filters``); b_i = 0 elsewhere.

Evaluation (:func:`evaluate`): for each of ``seeds`` seeds the tasks are split into ``folds``
folds; selectors that learn (alpha, Model2Vec, the static prior) are fitted on the other folds
and rank the experts for the held-out fold, so every task is ranked once per seed by
selectors that never saw it. The candidates for a task are the experts not trained on it
(a novel task); metrics with every expert as a candidate are in ``meta.all_experts``.

Relative error increase (Table 1): mean over tasks of err(picked) / err(best) - 1. Errors are
smoothed to (mistakes + 0.5) / (n_test + 1) first, since a best error of 0 (easy tasks with a
few test images) would make the ratio infinite; ``meta.ratio_of_means`` has the unsmoothed
mean error of the picks / mean best error - 1.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import distances, store
from .errors import Task2VecError
from .experts import IMAGENET_EXPERT
from .task2vec import FISHER_METHODS, TaskEmbedding, _versions

SELECTORS = ("chance", "imagenet", "task2vec", "task2vec_asym", "model2vec", "logme", "knn",
             "static_prior")
EMBEDDING_SELECTORS = ("chance", "imagenet", "task2vec", "task2vec_asym", "model2vec",
                       "static_prior")  # need only the task's embedding: usable for an upload
ALPHAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
MODEL2VEC_FILTERS = 512
MODEL2VEC_STEPS = 150
MODEL2VEC_LR = 0.05
MODEL2VEC_L2 = 1e-2


# ----------------------------------------------------------------------------------------------
# LogME (You et al., ICML 2021)


def logme(features: np.ndarray, labels: np.ndarray, max_iter: int = 11) -> float:
    """Log maximum evidence of a Bayesian linear model of the one-hot labels on ``features``.

    Per class c: y = f w + noise, w ~ N(0, 1/alpha), noise ~ N(0, 1/beta); alpha and beta by
    the fixed-point iteration of You et al. (Algorithm 1); the evidence per sample is averaged
    over classes. Higher = features that separate the classes better. ``features`` ``[N, D]``.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    n, d = f.shape
    # SVD of f: the eigenvalues sigma of f^T f and the projections of y onto the left vectors.
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s ** 2
    evidences = []
    for c in np.unique(y):
        yc = (y == c).astype(np.float64)
        proj2 = (u.T @ yc) ** 2
        res0 = max(float(yc @ yc - proj2.sum()), 0.0)  # part of y outside the span of f
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            lam = alpha / beta
            gamma = float((sigma / (sigma + lam)).sum())
            m2 = float((sigma * proj2 / (sigma + lam) ** 2).sum())  # ||m||^2
            res2 = float((proj2 * (lam / (sigma + lam)) ** 2).sum()) + res0  # ||y - f m||^2
            alpha = gamma / (m2 + 1e-5)
            beta = max(n - gamma, 1e-5) / (res2 + 1e-5)
            if abs(alpha / beta - lam) / lam < 1e-2:
                break
        lam = alpha / beta
        m2 = float((sigma * proj2 / (sigma + lam) ** 2).sum())
        res2 = float((proj2 * (lam / (sigma + lam)) ** 2).sum()) + res0
        # log det(alpha I + beta f^T f): d - len(sigma) eigenvalues are alpha alone
        logdet = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * math.log(alpha)
        evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * logdet
                    - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


# ----------------------------------------------------------------------------------------------
# Model2Vec (section 3.4)


def _dsym_torch(a, b):
    """d_sym between broadcast positive tensors over the last axis (torch, differentiable)."""
    import torch

    x = a / (a + b)
    k = x.shape[-1]
    sx, sxx = x.sum(-1), (x * x).sum(-1)
    return 1 - (sx - sxx) / torch.sqrt((sxx * (k - 2 * sx + sxx)).clamp_min(1e-30))


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
        d = _dsym_torch(m[:, None], t[None]) - self.alpha * _dsym_torch(m, t0)[:, None]
        return d.numpy()


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
    Full-batch Adam from b = 0; the only randomness is none (``seed`` is recorded).
    """
    import torch

    torch.manual_seed(seed)
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
    with torch.no_grad():
        d0 = _dsym_torch(fe[:, None], ft[None]) - alpha * _dsym_torch(fe, torch.full_like(fe, trivial_level))[:, None]
        spread = float(d0[cand].std()) if cand.any() else 1.0
    log_s = torch.tensor(math.log(1.0 / max(spread, 1e-6)), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([b, log_s], lr=lr)
    t0 = torch.full_like(fe, float(trivial_level))
    use = torch.from_numpy(usable)
    loss_value = float("nan")
    if use.any():
        for _ in range(steps):
            m = fe * b.exp()
            d = _dsym_torch(m[:, None], ft[None]) - alpha * _dsym_torch(m, t0)[:, None]
            logits = (-log_s.exp() * d).masked_fill(~cand, float("-inf")).T  # [T, E]
            loss = torch.nn.functional.cross_entropy(logits[use], best[use]) + l2 * b.square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
    return Model2Vec(chosen, b.detach().numpy().astype(np.float32), float(log_s.detach().exp()),
                     alpha, loss_value)


# ----------------------------------------------------------------------------------------------
# the data of one library


@dataclass
class SelectionData:
    """Everything selection needs from a library file, experts and tasks in id order."""

    expert_ids: list[str]
    expert_names: list[str]
    expert_values: np.ndarray  # [E, D] float32
    sources: list[set[str]]
    task_ids: list[str]
    task_values: np.ndarray  # [T, D]
    task_norms: np.ndarray  # [T]
    embed_seconds: np.ndarray  # [T]
    trivial_level: float
    errors: np.ndarray  # [E, T] test error
    n_test: np.ndarray  # [T]
    logme: np.ndarray  # [E, T]
    knn: np.ndarray  # [E, T]
    pair_seconds: np.ndarray  # [E, T] brute force: features + linear classifier
    feature_seconds: np.ndarray  # [E, T]
    logme_seconds: np.ndarray
    knn_seconds: np.ndarray

    @property
    def novel(self) -> np.ndarray:
        """bool [E, T]: expert not trained on the task."""
        return np.array([[t not in s for t in self.task_ids] for s in self.sources])

    @property
    def imagenet(self) -> int:
        return self.expert_ids.index(IMAGENET_EXPERT) if IMAGENET_EXPERT in self.expert_ids else -1


def load_selection_data(con) -> SelectionData:
    """Read and check a library file's experts, embeddings and complete performance matrix."""
    cur = con.cursor()
    ex = cur.execute("SELECT e.expert_id, e.name, e.source_tasks, ee.value FROM experts e "
                     "JOIN expert_embeddings ee USING (expert_id) ORDER BY e.expert_id").fetchall()
    if not ex:
        raise Task2VecError("the library has no experts: run python -m precompute experts, then matrix")
    method = store.task_method(store.get_info(cur))
    task_ids, task_values = store.embedding_matrix(cur, method)
    meta = cur.execute("SELECT task_id, norm, seconds, trivial_level FROM embeddings "
                       "WHERE method = ? ORDER BY task_id", [method]).fetchall()
    n_test = dict(cur.execute("SELECT task_id, num_test FROM tasks").fetchall())
    e_index = {r[0]: i for i, r in enumerate(ex)}
    t_index = {t: j for j, t in enumerate(task_ids)}
    shape = (len(ex), len(task_ids))
    arrays = {k: np.full(shape, np.nan) for k in ("err", "pair_s", "logme", "knn", "feat_s",
                                                   "logme_s", "knn_s")}
    rows = cur.execute("SELECT p.expert_id, p.task_id, p.test_error, p.seconds, f.logme, "
                       "f.knn_accuracy, f.feature_seconds, f.logme_seconds, f.knn_seconds "
                       "FROM performance p LEFT JOIN feature_scores f USING (expert_id, task_id)"
                       ).fetchall()
    for e, t, *vals in rows:
        if e in e_index and t in t_index:
            for key, v in zip(arrays, vals):
                arrays[key][e_index[e], t_index[t]] = np.nan if v is None else v
    missing = int(np.isnan(arrays["err"]).sum())
    if missing:
        raise Task2VecError(f"the performance matrix is incomplete ({missing} of {arrays['err'].size} "
                            "expert-task pairs missing): run python -m precompute matrix")
    return SelectionData(
        expert_ids=[r[0] for r in ex], expert_names=[r[1] for r in ex],
        expert_values=store.decode(np.stack([np.asarray(r[3]) for r in ex])),
        sources=[set(r[2] or []) for r in ex], task_ids=task_ids, task_values=task_values,
        task_norms=np.array([m[1] for m in meta]), embed_seconds=np.array([m[2] or 0.0 for m in meta]),
        trivial_level=float(meta[0][3]), errors=arrays["err"],
        n_test=np.array([n_test[t] for t in task_ids], dtype=float),
        logme=arrays["logme"], knn=arrays["knn"], pair_seconds=arrays["pair_s"],
        feature_seconds=arrays["feat_s"], logme_seconds=arrays["logme_s"], knn_seconds=arrays["knn_s"])


# ----------------------------------------------------------------------------------------------
# metrics


def smoothed(errors: np.ndarray, n_test: np.ndarray) -> np.ndarray:
    """(mistakes + 0.5) / (n_test + 1): keeps err(picked) / err(best) finite when best is 0."""
    return (errors * n_test + 0.5) / (n_test + 1)


def relative_error_increase(picked: np.ndarray, best: np.ndarray) -> np.ndarray:
    """err(picked) / err(best) - 1, per task (Table 1; 0 = the best expert was picked)."""
    return picked / best - 1.0


def _metrics(rankings: list[np.ndarray], errors: np.ndarray, n_test: np.ndarray,
             candidates: np.ndarray, tasks: np.ndarray) -> dict:
    """Mean relative error increase, top-1/top-3 hit rates and ratio of means over ``tasks``."""
    err_s = smoothed(errors, n_test[None])
    rel, top1, top3, picked_raw, best_raw = [], [], [], [], []
    for j, ranking in zip(tasks, rankings):
        cand = np.flatnonzero(candidates[:, j])
        best = errors[cand, j].min()
        rel.append(relative_error_increase(err_s[ranking[0], j], err_s[cand, j].min()))
        top1.append(errors[ranking[0], j] <= best + 1e-12)
        top3.append(errors[ranking[:3], j].min() <= best + 1e-12)
        picked_raw.append(errors[ranking[0], j])
        best_raw.append(best)
    return {"rel": float(np.mean(rel)), "top1": float(np.mean(top1)), "top3": float(np.mean(top3)),
            "ratio_of_means": float(np.mean(picked_raw) / max(np.mean(best_raw), 1e-12) - 1)}


def _chance_metrics(errors: np.ndarray, n_test: np.ndarray, candidates: np.ndarray,
                    tasks: np.ndarray) -> dict:
    """Exact expectations for a uniformly random pick among the candidates."""
    err_s = smoothed(errors, n_test[None])
    rel, top1, top3, picked_raw, best_raw = [], [], [], [], []
    for j in tasks:
        cand = np.flatnonzero(candidates[:, j])
        k = len(cand)
        best = errors[cand, j].min()
        hits = int((errors[cand, j] <= best + 1e-12).sum())
        rel.append(float(np.mean(err_s[cand, j] / err_s[cand, j].min() - 1)))
        top1.append(hits / k)
        top3.append(1.0 if k <= 3 else 1 - math.comb(k - hits, 3) / math.comb(k, 3))
        picked_raw.append(errors[cand, j].mean())
        best_raw.append(best)
    return {"rel": float(np.mean(rel)), "top1": float(np.mean(top1)), "top3": float(np.mean(top3)),
            "ratio_of_means": float(np.mean(picked_raw) / max(np.mean(best_raw), 1e-12) - 1)}


# ----------------------------------------------------------------------------------------------
# fitting and scoring


@dataclass
class FittedSelectors:
    """What the learning selectors took from the training tasks."""

    alpha: float
    static_prior: np.ndarray  # [E] mean normalised rank (0 = always best), lower = better
    model2vec: Model2Vec | None
    complexity: np.ndarray  # [E] d_sym(F_i, trivial)


def _mean_ranks(errors: np.ndarray, candidates: np.ndarray) -> np.ndarray:
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


def choose_alpha(dsym: np.ndarray, complexity: np.ndarray, errors: np.ndarray, n_test: np.ndarray,
                 candidates: np.ndarray) -> float:
    """The alpha of ``ALPHAS`` whose d_asym picks give the least mean relative error increase on
    the given tasks (ties: the one nearest the paper's 0.15)."""
    scores = []
    tasks = np.arange(errors.shape[1])
    for alpha in ALPHAS:
        d = dsym - alpha * complexity[:, None]
        d = np.where(candidates, d, np.inf)
        picks = [np.array([d[:, j].argmin()]) for j in tasks]
        scores.append(_metrics(picks, errors, n_test, candidates, tasks)["rel"])
    scores = np.round(scores, 12)
    best = min(range(len(ALPHAS)), key=lambda i: (scores[i], abs(ALPHAS[i] - 0.15)))
    return float(ALPHAS[best])


def fit_selectors(data: SelectionData, train: np.ndarray, candidates: np.ndarray, dsym: np.ndarray,
                  complexity: np.ndarray, *, seed: int = 0, model2vec: bool = True,
                  m2v_options: dict | None = None) -> FittedSelectors:
    """Fit alpha, the static prior and Model2Vec on the tasks ``train`` (indices)."""
    err, cand = data.errors[:, train], candidates[:, train]
    alpha = choose_alpha(dsym[:, train], complexity, err, data.n_test[train], cand)
    prior = _mean_ranks(err, cand)
    m2v = None
    if model2vec:
        m2v = fit_model2vec(data.expert_values, data.task_values[train], err, cand,
                            data.trivial_level, alpha, seed=seed, **(m2v_options or {}))
    return FittedSelectors(alpha, prior, m2v, complexity)


def selector_scores(selector: str, data: SelectionData, fitted: FittedSelectors | None,
                    tasks: np.ndarray, dsym: np.ndarray) -> np.ndarray:
    """``[E, len(tasks)]`` scores, higher = better."""
    e = len(data.expert_ids)
    if selector == "chance":
        return np.zeros((e, len(tasks)))
    if selector == "imagenet":
        s = np.zeros((e, len(tasks)))
        if data.imagenet >= 0:
            s[data.imagenet] = 1.0
        return s
    if selector == "task2vec":
        return _imagenet_last(-dsym[:, tasks], data.imagenet)
    if selector == "task2vec_asym":
        return _imagenet_last(-(dsym[:, tasks] - fitted.alpha * fitted.complexity[:, None]),
                              data.imagenet)
    if selector == "model2vec":
        return -fitted.model2vec.distances(data.expert_values, data.task_values[tasks],
                                           data.trivial_level)
    if selector == "logme":
        return data.logme[:, tasks]
    if selector == "knn":
        return data.knn[:, tasks]
    if selector == "static_prior":
        return np.repeat(-fitted.static_prior[:, None], len(tasks), axis=1)
    raise Task2VecError(f"unknown selector {selector!r}; choose from {', '.join(SELECTORS)}")


def _imagenet_last(scores: np.ndarray, imagenet: int) -> np.ndarray:
    """The TASK2VEC distance selectors pick "the expert trained on the most similar task"
    (section 4.2, strategy 1); ImageNet's task is unknown here, so it comes after every expert
    whose task is known (Model2Vec instead learns where to put it, from F = 0)."""
    if imagenet >= 0 and scores.shape[0] > 1:
        scores = scores.copy()
        others = np.delete(scores, imagenet, axis=0)
        scores[imagenet] = others.min(0) - 1.0
    return scores


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
# evaluation (Table 1)


def evaluate(con, *, seeds: int = 5, folds: int = 3, progress: bool = True,
             m2v_options: dict | None = None) -> dict:
    """Cross-validated Table 1 for the library in ``con`` (read-write); writes the results.

    Writes ``selection_results``, ``selector_rankings`` (held-out rankings of the first seed),
    ``model2vec`` (fitted on all tasks, for :func:`rank_experts`) and ``library_info`` keys
    ``optimal_error``, ``norm_error_spearman`` and ``selection``, in one transaction.
    """
    from scipy.stats import spearmanr
    from tqdm.auto import tqdm

    if seeds < 1 or folds < 2:
        raise Task2VecError("--seeds must be at least 1 and --folds at least 2")
    data = load_selection_data(con)
    t_count = len(data.task_ids)
    if t_count < folds:
        raise Task2VecError(f"{t_count} tasks are too few for {folds}-fold evaluation")
    novel = data.novel
    if (novel.sum(0) < 2).any():
        raise Task2VecError("some task has fewer than 2 candidate experts (not trained on it)")
    everything = np.ones_like(novel)
    dsym = distances.symmetric_matrix(data.expert_values, data.task_values)
    complexity = distances.symmetric_matrix(
        data.expert_values, np.full((1, data.expert_values.shape[1]), data.trivial_level, np.float32))[:, 0]
    per_seed = {s: {"novel": [], "all": []} for s in SELECTORS}
    select_s = {s: [] for s in SELECTORS}
    first_rankings: dict[str, dict[str, list[str]]] = {s: {} for s in SELECTORS}
    fit_s = []
    bar = tqdm(total=seeds * folds, desc="evaluate", unit="fold", disable=not progress)
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 3])
        parts = np.array_split(rng.permutation(t_count), folds)
        picks = {s: {"novel": {}, "all": {}} for s in SELECTORS}
        for k, held in enumerate(parts):
            train = np.sort(np.concatenate([p for i, p in enumerate(parts) if i != k]))
            held = np.sort(held)
            t0 = time.perf_counter()
            fitted = fit_selectors(data, train, novel, dsym, complexity, seed=seed,
                                   m2v_options=m2v_options)
            fit_s.append(time.perf_counter() - t0)
            for selector in SELECTORS:
                t0 = time.perf_counter()
                scores = selector_scores(selector, data, fitted, held, dsym)
                select_s[selector].append((time.perf_counter() - t0) / len(held))
                for setting, cand in (("novel", novel), ("all", everything)):
                    ranks = rankings_from_scores(scores, cand[:, held],
                                                 np.random.default_rng([seed, k, 5]))
                    picks[selector][setting].update(zip(held.tolist(), ranks))
            bar.update(1)
        tasks = np.arange(t_count)
        for selector in SELECTORS:
            for setting, cand in (("novel", novel), ("all", everything)):
                ranks = [picks[selector][setting][j] for j in tasks]
                m = (_chance_metrics(data.errors, data.n_test, cand, tasks) if selector == "chance"
                     else _metrics(ranks, data.errors, data.n_test, cand, tasks))
                per_seed[selector][setting].append(m)
            if seed == 0:
                first_rankings[selector] = {
                    data.task_ids[j]: [data.expert_ids[i] for i in picks[selector]["novel"][j]]
                    for j in tasks}
    bar.close()

    best_novel = np.where(novel, data.errors, np.inf).min(0)
    best_all = data.errors.min(0)
    rho = spearmanr(data.task_norms, best_all)
    costs = _selector_costs(data, select_s)
    results = {}
    for selector in SELECTORS:
        rows = {setting: _summary(per_seed[selector][setting]) for setting in ("novel", "all")}
        results[selector] = {**rows["novel"], "seconds": costs[selector]["total"],
                             "cost": costs[selector], "all_experts": rows["all"]}
    final = fit_selectors(data, np.arange(t_count), novel, dsym, complexity, seed=0,
                          m2v_options=m2v_options)
    summary = {
        "optimal_error": float(best_novel.mean()), "optimal_error_all_experts": float(best_all.mean()),
        "norm_error_spearman": float(rho.statistic), "norm_error_pvalue": float(rho.pvalue),
        "tasks": t_count, "experts": len(data.expert_ids), "seeds": seeds, "folds": folds,
        "selectors": results, "brute_force_seconds": float(data.pair_seconds.sum(0).mean()),
        "fit_seconds_per_fold": float(np.mean(fit_s)),
    }
    _write_evaluation(con, data, summary, first_rankings, final)
    return summary


def _summary(runs: list[dict]) -> dict:
    rel = np.array([r["rel"] for r in runs])
    return {"relative_error_increase": float(rel.mean()),
            "relative_error_increase_std": float(rel.std()),
            "top1": float(np.mean([r["top1"] for r in runs])),
            "top3": float(np.mean([r["top3"] for r in runs])),
            "ratio_of_means": float(np.mean([r["ratio_of_means"] for r in runs]))}


def _selector_costs(data: SelectionData, select_s: dict) -> dict:
    """Seconds per task: computing the selector's input for a new task, plus selecting."""
    embed = float(data.embed_seconds.mean())
    inputs = {
        "chance": 0.0, "imagenet": 0.0, "static_prior": 0.0,
        "task2vec": embed, "task2vec_asym": embed, "model2vec": embed,
        "logme": float((data.feature_seconds + data.logme_seconds).sum(0).mean()),
        "knn": float((data.feature_seconds + data.knn_seconds).sum(0).mean()),
    }
    return {s: {"input_s": inputs[s], "select_s": float(np.mean(select_s[s])),
                "total": inputs[s] + float(np.mean(select_s[s]))} for s in SELECTORS}


def _write_evaluation(con, data: SelectionData, summary: dict, rankings: dict,
                      final: FittedSelectors) -> None:
    m2v = final.model2vec
    dim = data.expert_values.shape[1]
    selection_info = {
        "alpha": final.alpha,
        "static_prior": dict(zip(data.expert_ids, map(float, final.static_prior))),
        "model2vec": {"filters": m2v.filters.tolist(), "scale": m2v.scale, "alpha": m2v.alpha,
                      "loss": m2v.loss, "bias": "log-Fisher units: m_i = F_i * exp(b_i)",
                      "steps": MODEL2VEC_STEPS, "lr": MODEL2VEC_LR, "l2": MODEL2VEC_L2},
        "seeds": summary["seeds"], "folds": summary["folds"],
        "candidates": "experts not trained on the task", "versions": _versions(),
    }
    con.execute("BEGIN TRANSACTION")
    try:
        for table in ("selection_results", "selector_rankings", "model2vec"):
            con.execute(f"DELETE FROM {table}")
        for selector, r in summary["selectors"].items():
            meta = {"ratio_of_means": r["ratio_of_means"], "cost": r["cost"],
                    "all_experts": r["all_experts"], "seeds": summary["seeds"],
                    "folds": summary["folds"]}
            con.execute("INSERT INTO selection_results VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [selector, r["relative_error_increase"], r["relative_error_increase_std"],
                         r["top1"], r["top3"], r["seconds"], json.dumps(meta)])
        con.executemany("INSERT INTO selector_rankings VALUES (?, ?, ?)",
                        [(s, t, r) for s, by_task in rankings.items() for t, r in by_task.items()])
        for i, expert_id in enumerate(data.expert_ids):
            bias = np.zeros(dim, dtype=np.float32)
            bias[m2v.filters] = m2v.bias[i]
            con.execute("INSERT INTO model2vec VALUES (?, ?, ?)",
                        [expert_id, store.encode(bias),
                         json.dumps({"alpha": m2v.alpha, "scale": m2v.scale,
                                     "bias_l2": float(np.sqrt((m2v.bias[i] ** 2).sum()))})])
        store.set_info(con, optimal_error=summary["optimal_error"],
                       norm_error_spearman=summary["norm_error_spearman"], selection=selection_info)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def table1(summary: dict) -> str:
    """The evaluation as text: the paper's Table 1 plus hit rates and costs."""
    lines = [
        f"model selection: {summary['tasks']} tasks, {summary['experts']} experts; candidates = "
        f"experts not trained on the task; {summary['seeds']} seeds x {summary['folds']}-fold "
        "over tasks (learned selectors never see the task they rank)",
        f"optimal error (mean best-expert test error): {100 * summary['optimal_error']:.2f}%"
        f"   (all experts as candidates: {100 * summary['optimal_error_all_experts']:.2f}%)",
        "",
        f"{'selector':<15} {'rel. error increase':>21} {'top-1':>6} {'top-3':>6} "
        f"{'s/task':>9}   {'all experts: rel.':>17} {'top-1':>6}",
    ]
    for name, r in summary["selectors"].items():
        a = r["all_experts"]
        lines.append(
            f"{name:<15} {100 * r['relative_error_increase']:>+12.2f}% ± {100 * r['relative_error_increase_std']:5.2f}"
            f" {r['top1']:>6.2f} {r['top3']:>6.2f} {r['seconds']:>9.4f}   "
            f"{100 * a['relative_error_increase']:>+16.2f}% {a['top1']:>6.2f}")
    lines += [
        f"{'brute force':<15} {'+0.00%':>13}{'':>8} {1:>6.2f} {1:>6.2f} {summary['brute_force_seconds']:>9.4f}",
        "",
        f"norm vs best-expert error (paper Fig. 2 right): Spearman rho = "
        f"{summary['norm_error_spearman']:+.3f} (p = {summary['norm_error_pvalue']:.2g}, "
        f"{summary['tasks']} tasks)",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# ranking the experts for a new task


def rank_experts(con, embedding: TaskEmbedding, selector: str = "model2vec") -> pd.DataFrame:
    """Rank the library's experts for a new task from its embedding alone.

    Args:
        con: a (read-only) duckdb connection or cursor to a library file with experts and,
            for ``task2vec_asym``, ``model2vec`` and ``static_prior``, an evaluation.
        embedding: the task's Fisher :class:`TaskEmbedding`, made with the library's probe,
            input size and Fisher method (``store.task_method``).
        selector: one of :data:`EMBEDDING_SELECTORS`.

    Returns:
        DataFrame with columns expert_id, name, score (higher = better), rank (1 = best),
        sorted by rank.
    """
    if selector not in SELECTORS:
        raise Task2VecError(f"unknown selector {selector!r}; choose from {', '.join(EMBEDDING_SELECTORS)}")
    if selector not in EMBEDDING_SELECTORS:
        raise Task2VecError(f"selector {selector!r} needs the task's images through every expert; "
                            f"from an embedding alone use one of {', '.join(EMBEDDING_SELECTORS)}")
    cur = con.cursor()
    info = store.get_info(cur)
    values = np.asarray(getattr(embedding, "values", embedding), dtype=np.float32)
    method = getattr(embedding, "method", store.task_method(info))
    if method not in FISHER_METHODS:
        raise Task2VecError(f"a {method} embedding cannot rank experts; use the library's "
                            f"Fisher method, {store.task_method(info)}")
    if getattr(embedding, "probe", info.get("probe")) != info.get("probe"):
        raise Task2VecError(f"the embedding was made with probe {embedding.probe}, the library "
                            f"with {info.get('probe')}: embed the task with the library's probe")
    size = getattr(embedding, "meta", {}).get("input_size", info.get("input_size"))
    if size != info.get("input_size"):
        raise Task2VecError(f"the embedding was made at {size} px, the library at "
                            f"{info.get('input_size')} px: embed the task at the library's size")
    if values.ndim != 1 or values.size != int(info.get("filters", -1)):
        raise Task2VecError(f"the embedding has {values.size} filters, the library {info.get('filters')}")
    rows = cur.execute("SELECT e.expert_id, e.name, ee.value, ee.trivial_level, m.bias "
                       "FROM experts e JOIN expert_embeddings ee USING (expert_id) "
                       "LEFT JOIN model2vec m USING (expert_id) ORDER BY e.expert_id").fetchall()
    if not rows:
        raise Task2VecError("the library has no experts: run python -m precompute experts")
    ids, names = [r[0] for r in rows], [r[1] for r in rows]
    experts = store.decode(np.stack([np.asarray(r[2]) for r in rows]))
    trivial = float(rows[0][3])
    sel = info.get("selection")
    if selector in ("task2vec_asym", "model2vec", "static_prior") and not sel:
        raise Task2VecError(f"selector {selector!r} is learned: run python -m precompute evaluate first")
    rng = np.random.default_rng(0)
    if selector == "chance":
        scores = rng.random(len(ids))
    elif selector == "imagenet":
        scores = np.array([1.0 if i == IMAGENET_EXPERT else 0.0 for i in ids])
    elif selector == "static_prior":
        scores = -np.array([sel["static_prior"].get(i, 0.5) for i in ids])
    elif selector == "model2vec":
        if any(r[4] is None for r in rows):
            raise Task2VecError("the Model2Vec biases are missing: run python -m precompute evaluate")
        filters = np.asarray(sel["model2vec"]["filters"])
        bias = store.decode(np.stack([np.asarray(r[4]) for r in rows]))[:, filters]
        m2v = Model2Vec(filters, bias, sel["model2vec"]["scale"], sel["model2vec"]["alpha"])
        scores = -m2v.distances(experts, values[None], trivial)[:, 0]
    else:
        d = distances.symmetric_matrix(experts, values[None])[:, 0]
        if selector == "task2vec_asym":
            t0 = np.full((1, experts.shape[1]), trivial, np.float32)
            d = d - sel["alpha"] * distances.symmetric_matrix(experts, t0)[:, 0]
        scores = _imagenet_last(-d[:, None], ids.index(IMAGENET_EXPERT)
                                if IMAGENET_EXPERT in ids else -1)[:, 0]
    order = np.lexsort((rng.permutation(len(ids)), -scores))
    rank = np.empty(len(ids), dtype=int)
    rank[order] = np.arange(1, len(ids) + 1)
    df = pd.DataFrame({"expert_id": ids, "name": names, "score": scores.astype(float), "rank": rank})
    return df.sort_values("rank", kind="stable").reset_index(drop=True)
