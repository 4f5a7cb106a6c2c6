"""Model selection (paper section 4.2, Table 1): which expert to use for a task.

The selectors (chance, ImageNet, TASK2VEC, asymmetric TASK2VEC, Model2Vec, LogME, k-NN, the
static prior) are classes registered by name in :mod:`precompute.selectors`, with one
``fit`` / ``score`` surface; this module runs them: :func:`evaluate` (Table 1) and
:func:`rank_experts` (a new task, as the app's upload page does).

Evaluation (:func:`evaluate`): for each of ``seeds`` seeds the tasks are split into ``folds``
folds; selectors that learn (alpha, Model2Vec, the static prior) are fitted on the other folds
and rank the experts for the held-out fold, so every task is ranked once per seed by
selectors that never saw it. The candidates for a task are the experts not trained on it
(a novel task); metrics with every expert as a candidate are in ``meta.all_experts``.

Relative error increase, its smoothing and the hit rates: :mod:`precompute.selectors`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import distances, store
from . import selectors as sel
from .errors import Task2VecError
from .experts import IMAGENET_EXPERT
from .selectors import EMBEDDING_SELECTORS, SELECTORS
from .task2vec import FISHER_METHODS, TaskEmbedding, _versions


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
    experts = _experts(data)
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
            fitted = _fit_all(experts, _training(data, train, novel, dsym), seed, m2v_options)
            fit_s.append(time.perf_counter() - t0)
            for selector in SELECTORS:
                t0 = time.perf_counter()
                scores = fitted[selector].score(experts, _tasks(data, held, dsym))
                select_s[selector].append((time.perf_counter() - t0) / len(held))
                for setting, cand in (("novel", novel), ("all", everything)):
                    ranks = sel.rankings_from_scores(scores, cand[:, held],
                                                     np.random.default_rng([seed, k, 5]))
                    picks[selector][setting].update(zip(held.tolist(), ranks))
            bar.update(1)
        tasks = np.arange(t_count)
        for selector in SELECTORS:
            for setting, cand in (("novel", novel), ("all", everything)):
                ranks = [picks[selector][setting][j] for j in tasks]
                m = sel.create(selector).metrics(ranks, data.errors, data.n_test, cand, tasks)
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
    final = _fit_all(experts, _training(data, np.arange(t_count), novel, dsym), 0, m2v_options)
    summary = {
        "optimal_error": float(best_novel.mean()), "optimal_error_all_experts": float(best_all.mean()),
        "norm_error_spearman": float(rho.statistic), "norm_error_pvalue": float(rho.pvalue),
        "tasks": t_count, "experts": len(data.expert_ids), "seeds": seeds, "folds": folds,
        "selectors": results, "brute_force_seconds": float(data.pair_seconds.sum(0).mean()),
        "fit_seconds_per_fold": float(np.mean(fit_s)),
    }
    _write_evaluation(con, data, summary, first_rankings, final)
    return summary


def _experts(data: SelectionData) -> sel.Experts:
    return sel.Experts(data.expert_ids, data.expert_values, data.trivial_level,
                       distances.complexity(data.expert_values, data.trivial_level), data.imagenet)


def _tasks(data: SelectionData, tasks: np.ndarray, dsym: np.ndarray) -> sel.Tasks:
    return sel.Tasks(data.task_values[tasks], dsym[:, tasks], data.logme[:, tasks],
                     data.knn[:, tasks])


def _training(data: SelectionData, train: np.ndarray, candidates: np.ndarray,
              dsym: np.ndarray) -> sel.Training:
    return sel.Training(_tasks(data, train, dsym), data.errors[:, train], data.n_test[train],
                        candidates[:, train])


def _fit_all(experts: sel.Experts, training: sel.Training, seed: int,
             m2v_options: dict | None) -> dict[str, sel.Selector]:
    """Every selector, fitted on ``training`` (those that learn nothing return themselves)."""
    options = {"model2vec": {"seed": seed, **(m2v_options or {})}}
    return {name: sel.create(name, **options.get(name, {})).fit(experts, training)
            for name in SELECTORS}


# what evaluate writes, and what new tasks make stale (build drops it: run evaluate again)
EVALUATION_TABLES = ("selection_results", "selector_rankings", "model2vec")
EVALUATION_INFO = ("optimal_error", "norm_error_spearman", "selection")


def drop_evaluation(con) -> None:
    """Delete the stored evaluation (the tables may be absent: a library without experts)."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    for table in EVALUATION_TABLES:
        if table in tables:
            con.execute(f"DELETE FROM {table}")
    con.execute(f"DELETE FROM library_info WHERE key IN ({', '.join('?' * len(EVALUATION_INFO))})",
                list(EVALUATION_INFO))


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
                      final: dict[str, sel.Selector]) -> None:
    """The results, the held-out rankings and the selectors fitted on all tasks (the state
    :func:`rank_experts` reads back through ``Selector.from_library``)."""
    m2v = final["model2vec"].model
    dim = data.expert_values.shape[1]
    selection_info = {
        **final["task2vec_asym"].state(),
        "static_prior": final["static_prior"].state(),
        "model2vec": final["model2vec"].state(),
        "seeds": summary["seeds"], "folds": summary["folds"],
        "candidates": "experts not trained on the task", "versions": _versions(),
    }
    with store.transaction(con):
        for table in EVALUATION_TABLES:  # the library_info keys are replaced below
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
    values_e = store.decode(np.stack([np.asarray(r[2]) for r in rows]))
    trivial = float(rows[0][3])
    bias = (None if any(r[4] is None for r in rows)
            else store.decode(np.stack([np.asarray(r[4]) for r in rows])))
    fitted = sel.REGISTRY[selector].from_library(info.get("selection"), bias)
    experts = sel.Experts(ids, values_e, trivial, distances.complexity(values_e, trivial),
                          ids.index(IMAGENET_EXPERT) if IMAGENET_EXPERT in ids else -1)
    rng = np.random.default_rng(0)  # chance's scores, then the order of ties
    scores = fitted.score(experts, sel.Tasks(values[None], distances.symmetric_matrix(
        values_e, values[None]), rng=rng))[:, 0]
    order = np.lexsort((rng.permutation(len(ids)), -scores))
    rank = np.empty(len(ids), dtype=int)
    rank[order] = np.arange(1, len(ids) + 1)
    df = pd.DataFrame({"expert_id": ids, "name": names, "score": scores.astype(float), "rank": rank})
    return df.sort_values("rank", kind="stable").reset_index(drop=True)
