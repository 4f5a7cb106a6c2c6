"""Model selection (paper section 4.2, Table 1): which expert to use for a task.

The selectors (chance, ImageNet, TASK2VEC, asymmetric TASK2VEC, Model2Vec, LogME, k-NN,
H-score, LEEP, NCE, the static prior) are classes registered by name in :mod:`precompute.selectors`, with one
``fit`` / ``score`` surface; this module runs them: :func:`evaluate` (Table 1) and
:func:`rank_experts` (a new task, as the app's upload page does).

Evaluation (:func:`evaluate`): for each of ``seeds`` seeds the tasks are split into ``folds``
folds; selectors that learn (alpha, Model2Vec, the static prior) are fitted on the other folds
and rank the experts for the held-out fold, so every task is ranked once per seed by
selectors that never saw it. The candidates for a task are the experts not trained on it
(a novel task); metrics with every expert as a candidate are in ``meta.all_experts``.

Metrics (relative error increase and its smoothing, regret, hit rates, weighted Kendall tau):
:mod:`precompute.selectors`. Each is reported as its mean over tasks (per task first averaged
over the seeds), a 95 % percentile interval from a seeded bootstrap over tasks
(``BOOTSTRAP_RESAMPLES`` resamples of the tasks with replacement, the same resamples for every
selector, so that intervals of two selectors are comparable), and the standard deviation over
seeds of the per-seed means (the spread the fold split and the learned fits cause).
The interval answers "how much would the number move on another library of such tasks", the
spread "how much on another split of this one". Whether one selector beats another is answered
by the paired interval of their per-task difference over the same resamples
(:func:`paired_differences`, for the pairs in ``PAIRED``), where each task's own difficulty
cancels.
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
from .selectors import EMBEDDING_SELECTORS, SELECTORS, TRANSFER_SELECTORS
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
    transfer: dict[str, np.ndarray]  # transfer selector -> [E, T] score (available ones only)
    transfer_seconds: dict[str, np.ndarray]  # [E, T] seconds of the score after the features
    pair_seconds: np.ndarray  # [E, T] brute force: features + linear classifier
    feature_seconds: np.ndarray  # [E, T]
    unavailable: dict[str, str]  # selector -> why this file cannot evaluate it
    unknown: tuple[int, ...] = ()  # user experts whose training task is unknown

    @property
    def novel(self) -> np.ndarray:
        """bool [E, T]: expert not trained on the task."""
        return np.array([[t not in s for t in self.task_ids] for s in self.sources])

    @property
    def imagenet(self) -> int:
        return self.expert_ids.index(IMAGENET_EXPERT) if IMAGENET_EXPERT in self.expert_ids else -1

    @property
    def selectors(self) -> tuple[str, ...]:
        """The registered selectors this file can evaluate, in the registry's order."""
        return tuple(s for s in SELECTORS if s not in self.unavailable)


def load_selection_data(con) -> SelectionData:
    """Read and check a library file's experts, embeddings and complete performance matrix.

    The transfer scores are read from the ``feature_scores`` columns present: a file made
    before a score existed (e.g. ``hscore``, ``leep``, ``nce`` in the shipped demo library)
    lacks its column, and a score missing for some pair cannot rank that task's experts; such
    selectors are listed in ``unavailable`` with the reason, and ``evaluate`` skips them.
    """
    cur = con.cursor()
    ex = cur.execute("SELECT e.expert_id, e.name, e.source_tasks, ee.value, e.meta FROM experts e "
                     "JOIN expert_embeddings ee USING (expert_id) ORDER BY e.expert_id").fetchall()
    if not ex:
        raise Task2VecError("the library has no experts: run python -m precompute experts, then matrix")
    method = store.task_method(store.get_info(cur))
    task_ids, task_values = store.embedding_matrix(cur, method)
    meta = cur.execute("SELECT task_id, norm, seconds, trivial_level FROM embeddings "
                       "WHERE method = ? ORDER BY task_id", [method]).fetchall()
    n_test = dict(cur.execute("SELECT task_id, num_test FROM tasks").fetchall())
    present = {r[0] for r in cur.execute("SELECT column_name FROM information_schema.columns "
                                         "WHERE table_name = 'feature_scores'").fetchall()}
    unavailable: dict[str, str] = {}
    columns = {"err": "p.test_error", "pair_s": "p.seconds"}
    if "feature_seconds" in present:
        columns["feat_s"] = "f.feature_seconds"
    for name in TRANSFER_SELECTORS:
        cls = sel.REGISTRY[name]
        if cls.column not in present:
            unavailable[name] = (f"feature_scores has no {cls.column} column (the matrix was "
                                 f"computed before {name} existed): recompute the matrix to "
                                 "evaluate it" if present else
                                 "the library has no feature_scores table: run python -m precompute matrix")
            continue
        columns[name] = f"f.{cls.column}"
        if cls.seconds_column in present:
            columns[f"{name}_s"] = f"f.{cls.seconds_column}"
    e_index = {r[0]: i for i, r in enumerate(ex)}
    t_index = {t: j for j, t in enumerate(task_ids)}
    shape = (len(ex), len(task_ids))
    arrays = {k: np.full(shape, np.nan) for k in (*columns, "feat_s")}
    join = " LEFT JOIN feature_scores f USING (expert_id, task_id)" if present else ""
    rows = cur.execute(f"SELECT p.expert_id, p.task_id, {', '.join(columns.values())} "
                       f"FROM performance p{join}").fetchall()
    for e, t, *vals in rows:
        if e in e_index and t in t_index:
            for key, v in zip(columns, vals):
                arrays[key][e_index[e], t_index[t]] = np.nan if v is None else v
    missing = int(np.isnan(arrays["err"]).sum())
    if missing:
        raise Task2VecError(f"the performance matrix is incomplete ({missing} of {arrays['err'].size} "
                            "expert-task pairs missing): run python -m precompute matrix")
    transfer, transfer_s = {}, {}
    for name in TRANSFER_SELECTORS:
        if name in unavailable:
            continue
        gaps = int(np.isnan(arrays[name]).sum())
        if gaps == arrays[name].size:  # an older file opened for writing: the column, empty
            unavailable[name] = (f"feature_scores has no {sel.REGISTRY[name].column} scores (the "
                                 f"matrix was computed before {name} existed, or not yet): "
                                 "recompute the matrix to evaluate it")
            continue
        if gaps:
            unavailable[name] = (f"{gaps} of {arrays[name].size} expert-task pairs have no "
                                 f"{sel.REGISTRY[name].column} score: run python -m precompute matrix")
            continue
        transfer[name] = arrays[name]
        transfer_s[name] = arrays.get(f"{name}_s", np.full(shape, np.nan))
    return SelectionData(
        expert_ids=[r[0] for r in ex], expert_names=[r[1] for r in ex],
        expert_values=store.decode(np.stack([np.asarray(r[3]) for r in ex])),
        sources=[set(r[2] or []) for r in ex], task_ids=task_ids, task_values=task_values,
        task_norms=np.array([m[1] for m in meta]), embed_seconds=np.array([m[2] or 0.0 for m in meta]),
        trivial_level=float(meta[0][3]), errors=arrays["err"],
        n_test=np.array([n_test[t] for t in task_ids], dtype=float),
        transfer=transfer, transfer_seconds=transfer_s, pair_seconds=arrays["pair_s"],
        feature_seconds=arrays["feat_s"], unavailable=unavailable,
        unknown=_unknown_task([json.loads(r[4] or "{}") for r in ex]))


def _unknown_task(metas: list[dict]) -> tuple[int, ...]:
    """Indices of the user experts (add-expert) whose training task is unknown."""
    return tuple(i for i, m in enumerate(metas) if m.get("task_known") is False)


# ----------------------------------------------------------------------------------------------
# evaluation (Table 1)


BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_LEVEL = 0.95
# the metrics summarised per selector: name in the per-task metrics -> key in the results
REPORTED = {"rel": "relative_error_increase", "regret": "regret", "tau": "tau",
            "top1": "top1", "top3": "top3"}


def evaluate(con, *, seeds: int = 5, folds: int = 3, progress: bool = True,
             m2v_options: dict | None = None, bootstrap_seed: int = 0) -> dict:
    """Cross-validated Table 1 for the library in ``con`` (read-write); writes the results.

    Writes ``selection_results``, ``selector_rankings`` (held-out rankings of the first seed),
    ``model2vec`` (fitted on all tasks, for :func:`rank_experts`) and ``library_info`` keys
    ``optimal_error``, ``norm_error_spearman`` and ``selection``, in one transaction.
    Selectors the file lacks the inputs for (``SelectionData.unavailable``) are skipped and
    listed in the summary's ``unavailable``. ``bootstrap_seed`` seeds the resampling of tasks
    for the intervals (its own generator).
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
    names = data.selectors
    per_seed = {s: {"novel": [], "all": []} for s in names}  # per seed: per-task metrics
    select_s = {s: [] for s in names}
    first_rankings: dict[str, dict[str, list[str]]] = {s: {} for s in names}
    fit_s = []
    bar = tqdm(total=seeds * folds, desc="evaluate", unit="fold", disable=not progress)
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 3])
        parts = np.array_split(rng.permutation(t_count), folds)
        picks = {s: {"novel": {}, "all": {}} for s in names}
        scores_all = {s: np.zeros(data.errors.shape) for s in names}  # held-out scores
        for k, held in enumerate(parts):
            train = np.sort(np.concatenate([p for i, p in enumerate(parts) if i != k]))
            held = np.sort(held)
            t0 = time.perf_counter()
            fitted = _fit_all(experts, _training(data, train, novel, dsym), seed, m2v_options, names)
            fit_s.append(time.perf_counter() - t0)
            # chance draws its scores from a generator of its own per (seed, fold)
            held_tasks = _tasks(data, held, dsym, rng=np.random.default_rng([seed, k, 7]))
            for selector in names:
                t0 = time.perf_counter()
                scores = fitted[selector].score(experts, held_tasks)
                select_s[selector].append((time.perf_counter() - t0) / len(held))
                scores_all[selector][:, held] = scores
                for setting, cand in (("novel", novel), ("all", everything)):
                    ranks = sel.rankings_from_scores(scores, cand[:, held],
                                                     np.random.default_rng([seed, k, 5]))
                    picks[selector][setting].update(zip(held.tolist(), ranks))
            bar.update(1)
        tasks = np.arange(t_count)
        for selector in names:
            for setting, cand in (("novel", novel), ("all", everything)):
                ranks = [picks[selector][setting][j] for j in tasks]
                m = sel.create(selector).metrics(ranks, scores_all[selector], data.errors,
                                                 data.n_test, cand, tasks)
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
    resamples = bootstrap_indices(t_count, BOOTSTRAP_RESAMPLES, bootstrap_seed)
    results, task_means = {}, {}
    for selector in names:
        rows, task_means[selector] = _summary(per_seed[selector]["novel"], resamples)
        rows_all, _ = _summary(per_seed[selector]["all"], resamples)
        results[selector] = {**rows, "seconds": costs[selector]["total"],
                             "cost": costs[selector], "all_experts": rows_all}
    final = _fit_all(experts, _training(data, np.arange(t_count), novel, dsym), 0, m2v_options,
                     names)
    summary = {
        "optimal_error": float(best_novel.mean()), "optimal_error_all_experts": float(best_all.mean()),
        "norm_error_spearman": float(rho.statistic), "norm_error_pvalue": float(rho.pvalue),
        "tasks": t_count, "experts": len(data.expert_ids), "seeds": seeds, "folds": folds,
        "selectors": results, "paired": paired_differences(task_means, resamples),
        "unavailable": dict(data.unavailable),
        "brute_force_seconds": float(data.pair_seconds.sum(0).mean()),
        "fit_seconds_per_fold": float(np.mean(fit_s)),
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "level": BOOTSTRAP_LEVEL,
                      "seed": bootstrap_seed, "over": "tasks"},
        "tau": TAU_DEFINITION,
    }
    _write_evaluation(con, data, summary, first_rankings, final)
    return summary


TAU_DEFINITION = ("scipy.stats.weightedtau(score, -test_error) per task over its candidates "
                  "(additive hyperbolic weigher 1/(r+1), ranks averaged over both orders); "
                  "+1 = scores order the experts as their accuracy does; tasks whose candidate "
                  "errors (or scores) all tie are left out")


def bootstrap_indices(n_tasks: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n_tasks]`` task indices drawn with replacement (its own generator)."""
    return np.random.default_rng([seed, 11]).integers(0, n_tasks, (resamples, n_tasks))


def bootstrap_interval(values: np.ndarray, resamples: np.ndarray,
                       level: float = BOOTSTRAP_LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean over tasks of ``values`` (``[T]``, NaN = undefined for
    that task, left out of each resample's mean) over the resampled task sets ``resamples``."""
    picked = values[resamples]
    defined = np.isfinite(picked)
    counts = defined.sum(1)
    if not counts.any():
        return float("nan"), float("nan")
    means = np.where(defined, picked, 0.0).sum(1)[counts > 0] / counts[counts > 0]
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _experts(data: SelectionData) -> sel.Experts:
    return sel.Experts(data.expert_ids, data.expert_values, data.trivial_level,
                       distances.complexity(data.expert_values, data.trivial_level), data.imagenet,
                       data.unknown)


def _tasks(data: SelectionData, tasks: np.ndarray, dsym: np.ndarray,
           rng: np.random.Generator | None = None) -> sel.Tasks:
    return sel.Tasks(data.task_values[tasks], dsym[:, tasks], rng=rng,
                     **{name: score[:, tasks] for name, score in data.transfer.items()})


def _training(data: SelectionData, train: np.ndarray, candidates: np.ndarray,
              dsym: np.ndarray) -> sel.Training:
    return sel.Training(_tasks(data, train, dsym), data.errors[:, train], data.n_test[train],
                        candidates[:, train])


def _fit_all(experts: sel.Experts, training: sel.Training, seed: int,
             m2v_options: dict | None, names=SELECTORS) -> dict[str, sel.Selector]:
    """The selectors ``names``, fitted on ``training`` (those that learn nothing return
    themselves)."""
    options = {"model2vec": {"seed": seed, **(m2v_options or {})}}
    return {name: sel.create(name, **options.get(name, {})).fit(experts, training)
            for name in names}


# what evaluate writes, and what new tasks make stale (build drops it: run evaluate again)
EVALUATION_TABLES = ("selection_results", "selector_rankings", "model2vec")
EVALUATION_INFO = ("optimal_error", "norm_error_spearman", "selection", "selection_stale")


def drop_evaluation(con) -> None:
    """Delete the stored evaluation (the tables may be absent: a library without experts)."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    for table in EVALUATION_TABLES:
        if table in tables:
            con.execute(f"DELETE FROM {table}")
    con.execute(f"DELETE FROM library_info WHERE key IN ({', '.join('?' * len(EVALUATION_INFO))})",
                list(EVALUATION_INFO))


# The orders Table 1 is read for (paper section 4.2): the learned embedding selectors against
# the static prior and chance, and MODEL2VEC against the asymmetric distance.
PAIRED = (("task2vec_asym", "static_prior"), ("model2vec", "static_prior"),
          ("model2vec", "task2vec_asym"), ("task2vec_asym", "chance"), ("model2vec", "chance"))
PAIRED_METRICS = ("relative_error_increase", "regret", "tau")


def paired_differences(task_means: dict[str, dict[str, np.ndarray]], resamples: np.ndarray,
                       pairs=PAIRED) -> dict:
    """``{"a - b": {metric: [mean, lo, hi]}}``: the mean over tasks of selector a's per-task
    metric minus b's, and its percentile interval over the same task resamples as every other
    interval (a paired bootstrap). Each task's own difficulty cancels in the difference, so two
    selectors whose intervals overlap can still be ordered: an interval that excludes 0 does
    that. Pairs with a selector the file could not evaluate are left out."""
    out = {}
    for a, b in pairs:
        if a in task_means and b in task_means:
            diffs = {m: task_means[a][m] - task_means[b][m] for m in PAIRED_METRICS}
            out[f"{a} - {b}"] = {m: [float(np.nanmean(d)), *bootstrap_interval(d, resamples)]
                                 for m, d in diffs.items()}
    return out


def _summary(runs: list[dict], resamples: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """One selector's metrics from its per-task metrics of every seed (``runs``): per metric
    the mean over tasks of the per-task mean over seeds, ``_ci`` its bootstrap interval over
    tasks, ``_std`` the standard deviation over seeds of the per-seed means; ``tau_tasks``: the
    tasks where tau is defined. Also the per-task means, by metric name (NaN: undefined)."""
    out, task_means = {}, {}
    for key, name in REPORTED.items():
        per_task = np.stack([r[key] for r in runs])  # [seeds, T]
        defined = np.isfinite(per_task)
        with np.errstate(invalid="ignore"):
            task_mean = np.where(defined.any(0), np.nansum(per_task, 0) /
                                 np.maximum(defined.sum(0), 1), np.nan)
            seed_means = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan
                                   for row in per_task])
        point = float(np.nanmean(task_mean)) if np.isfinite(task_mean).any() else float("nan")
        out[name], task_means[name] = point, task_mean
        out[f"{name}_std"] = float(np.nanstd(seed_means)) if np.isfinite(seed_means).any() else float("nan")
        out[f"{name}_ci"] = list(bootstrap_interval(task_mean, resamples))
        if key == "tau":
            out["tau_tasks"] = int(np.isfinite(task_mean).sum())
    out["ratio_of_means"] = float(np.mean([sel.summarise(r)["ratio_of_means"] for r in runs]))
    return out, task_means


def _selector_costs(data: SelectionData, select_s: dict) -> dict:
    """Seconds per task: computing the selector's input for a new task, plus selecting. A
    transfer score's input is every expert's features of the task plus the score on them
    (NaN where the file has no seconds column for it)."""
    embed = float(data.embed_seconds.mean())
    inputs = {"chance": 0.0, "imagenet": 0.0, "static_prior": 0.0,
              "task2vec": embed, "task2vec_asym": embed, "model2vec": embed}
    for name, seconds in data.transfer_seconds.items():
        inputs[name] = float((data.feature_seconds + seconds).sum(0).mean())
    return {s: {"input_s": inputs[s], "select_s": float(np.mean(select_s[s])),
                "total": inputs[s] + float(np.mean(select_s[s]))} for s in select_s}


def _json_safe(value):
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


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
        "bootstrap": summary["bootstrap"], "tau": summary["tau"],
        "unavailable": summary["unavailable"], "paired": summary["paired"],
    }
    with store.transaction(con):
        for table in EVALUATION_TABLES:  # the library_info keys are replaced below
            con.execute(f"DELETE FROM {table}")
        con.execute("DELETE FROM library_info WHERE key = 'selection_stale'")
        for selector, r in summary["selectors"].items():
            # the field's metrics live in meta (older files lack them; the app shows what
            # a file has): regret (error units), tau, their _ci / _std, tau_tasks
            meta = {k: v for k, v in r.items() if k not in (
                "relative_error_increase", "relative_error_increase_std", "top1", "top3",
                "seconds")}
            meta.update(seeds=summary["seeds"], folds=summary["folds"],
                        bootstrap=summary["bootstrap"])
            row = [r["relative_error_increase"], r["relative_error_increase_std"], r["top1"],
                   r["top3"], r["seconds"]]
            con.execute("INSERT INTO selection_results VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [selector, *_json_safe(row), json.dumps(_json_safe(meta))])
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
                       norm_error_spearman=summary["norm_error_spearman"],
                       selection=_json_safe(selection_info))


def _interval(ci, scale: float = 100.0, fmt: str = "+.1f") -> str:
    if ci is None or any(v is None or not np.isfinite(v) for v in ci):
        return "[   n/a   ]"
    return f"[{scale * ci[0]:{fmt}}, {scale * ci[1]:{fmt}}]"


def table1(summary: dict) -> str:
    """The evaluation as text: the paper's Table 1 plus hit rates and costs, then the field's
    metrics (weighted tau, regret) with their bootstrap intervals and spread over seeds."""
    boot = summary.get("bootstrap", {})
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
        f"the field's metrics: mean over tasks [{100 * boot.get('level', BOOTSTRAP_LEVEL):.0f}% "
        f"bootstrap interval over tasks, {boot.get('resamples', BOOTSTRAP_RESAMPLES)} resamples] "
        "± std over seeds",
        "  weighted tau: scipy.stats.weightedtau(score, -error) over a task's candidates "
        "(hyperbolic weigher; +1 = the accuracy order, 0 = unrelated)",
        "  regret: error of the pick minus the best candidate's, in error points",
        f"{'selector':<15} {'weighted tau':>13} {'interval':>16} {'± std':>6} {'tasks':>6}   "
        f"{'regret (pts)':>12} {'interval':>14} {'± std':>6}   {'rel. increase interval (%)':>26}",
    ]
    for name, r in summary["selectors"].items():
        tau = r["tau"]
        lines.append(
            f"{name:<15} {tau if np.isfinite(tau) else float('nan'):>+13.3f} "
            f"{_interval(r['tau_ci'], 1.0, '+.3f'):>16} {r['tau_std']:>6.3f} {r['tau_tasks']:>6d}   "
            f"{100 * r['regret']:>12.2f} {_interval(r['regret_ci'], 100.0, '.2f'):>14} "
            f"{100 * r['regret_std']:>6.2f}   {_interval(r['relative_error_increase_ci']):>26}")
    for name, why in summary.get("unavailable", {}).items():
        lines.append(f"{name:<15} not evaluated: {why}")
    if summary.get("paired"):
        lines += ["", "paired differences, a - b: mean over tasks [paired bootstrap interval over "
                  "the same resamples]; an interval clear of 0 orders the two",
                  f"{'a - b':<30} {'rel. error increase (%)':>32} {'regret (pts)':>24} "
                  f"{'weighted tau':>26}"]
        for pair, d in summary["paired"].items():
            rel, regret, tau = (d[m] for m in PAIRED_METRICS)
            lines.append(f"{pair:<30} {100 * rel[0]:>+9.2f} {_interval(rel[1:]):>22} "
                         f"{100 * regret[0]:>+8.2f} {_interval(regret[1:], 100.0, '+.2f'):>15} "
                         f"{tau[0]:>+8.3f} {_interval(tau[1:], 1.0, '+.3f'):>17}")
    lines += [
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
        DataFrame with columns expert_id, name, kind (``imagenet``, ``finetuned``, ``user``:
        a model added with add-expert), score (higher = better), rank (1 = best), note; sorted
        by rank. Experts the selector cannot rank (a user model whose training task is unknown,
        for the TASK2VEC distances; one added after the evaluation, for Model2Vec) come last
        with score NaN, rank <NA> and the reason in ``note``.
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
    rows = cur.execute("SELECT e.expert_id, e.name, e.kind, e.meta, ee.value, ee.trivial_level, "
                       "m.bias FROM experts e JOIN expert_embeddings ee USING (expert_id) "
                       "LEFT JOIN model2vec m USING (expert_id) ORDER BY e.expert_id").fetchall()
    if not rows:
        raise Task2VecError("the library has no experts: run python -m precompute experts")
    ids, names, kinds = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    values_e = store.decode(np.stack([np.asarray(r[4]) for r in rows]))
    trivial = float(rows[0][5])
    experts = sel.Experts(ids, values_e, trivial, distances.complexity(values_e, trivial),
                          ids.index(IMAGENET_EXPERT) if IMAGENET_EXPERT in ids else -1,
                          _unknown_task([json.loads(r[3] or "{}") for r in rows]))
    # experts this selector cannot rank, and why
    unranked: dict[int, str] = {}
    if selector in ("task2vec", "task2vec_asym"):
        unranked = {i: "its training task is unknown (add it with --trained-on to rank it "
                    "by TASK2VEC)" for i in experts.unknown}
    has_bias = [r[6] is not None for r in rows]
    bias = None
    if any(has_bias):
        zero = np.zeros(values_e.shape[1], dtype=np.uint16)  # bf16 bits of 0
        bias = store.decode(np.stack([np.asarray(r[6]) if r[6] is not None else zero for r in rows]))
        if selector == "model2vec":
            unranked = {i: "added after the last evaluation: run python -m precompute evaluate "
                        "to place it" for i, b in enumerate(has_bias) if not b}
    fitted = sel.REGISTRY[selector].from_library(info.get("selection"), bias)
    if selector == "static_prior" and any(i not in fitted.ids for i in ids):
        fitted, unranked = _static_prior_now(cur, fitted, ids)
    rng = np.random.default_rng(0)  # chance's scores, then the order of ties
    scores = fitted.score(experts, sel.Tasks(values[None], distances.symmetric_matrix(
        values_e, values[None]), rng=rng))[:, 0].astype(float)
    ranked = np.ones(len(ids), dtype=bool)
    ranked[list(unranked)] = False
    scores[~ranked] = np.nan
    order = np.lexsort((rng.permutation(len(ids)), -np.nan_to_num(scores, nan=-np.inf), ~ranked))
    rank = pd.array([pd.NA] * len(ids), dtype="Int64")
    for position, i in enumerate(order[:int(ranked.sum())]):
        rank[i] = position + 1
    df = pd.DataFrame({"expert_id": ids, "name": names, "kind": kinds, "score": scores,
                       "rank": rank, "note": [unranked.get(i, "") for i in range(len(ids))]})
    df["_order"] = np.argsort(order)
    return df.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def _static_prior_now(cur, stored: sel.StaticPrior, ids: list[str]):
    """The static prior over the file's experts now (one added since the evaluation): the
    mean normalised rank recomputed from the complete performance matrix, or, while the
    matrix lacks the new experts' column, the stored prior with those experts unranked."""
    try:
        data = load_selection_data(cur)
    except Task2VecError:
        missing = {i: "not in the performance matrix yet: run python -m precompute matrix"
                   for i, e in enumerate(ids) if e not in stored.ids}
        return stored, missing
    return sel.StaticPrior(sel.mean_ranks(data.errors, data.novel), data.expert_ids), {}
