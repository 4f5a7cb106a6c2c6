"""Model selection's metrics and the transfer-score selectors (precompute.selectors,
precompute.selection): weighted Kendall tau, regret and their bootstrap intervals, checked by
hand, against scipy, and end to end on a small constructed library file whose right answers
are known (an H-score column that orders the experts exactly as their errors do, a LEEP
column that orders them backwards).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from scipy.stats import weightedtau

from precompute import selection, selectors, store
from precompute.experts import IMAGENET_EXPERT

DIM = 48
FAMILIES = ("a", "b", "c")
TASKS_PER_FAMILY = 8
N_TEST = 50
SECONDS = {"feature": 0.5, "logme": 0.01, "knn": 0.02, "hscore": 0.03, "leep": 0.04, "nce": 0.05}
NEW_SCORES = ("hscore", "leep", "nce")
M2V_FAST = {"steps": 10}


# ---------------------------------------------------------------------------------------------
# formulas by hand


def test_weighted_tau_by_hand_and_against_scipy():
    errors = np.array([0.1, 0.2, 0.3])
    assert selectors.weighted_tau(np.array([3.0, 2.0, 1.0]), errors) == pytest.approx(1.0)
    assert selectors.weighted_tau(np.array([1.0, 2.0, 3.0]), errors) == pytest.approx(-1.0)
    # scores put expert 2 above expert 1. Ranked by score: 0, 2, 1 -> weights 1, 1/2, 1/3;
    # the discordant exchange (1, 2) weighs 1/3 + 1/2 of a total 11/3: tau = (11/3 - 2 * 5/6)
    # / (11/3) = 6/11; ranked by accuracy the weights are 1, 1/2, 1/3 for 0, 1, 2, the same
    # exchange again weighs 5/6 of 11/3: 6/11; the average is 6/11
    assert selectors.weighted_tau(np.array([3.0, 1.0, 2.0]), errors) == pytest.approx(6 / 11)
    # the top of the order counts more than its bottom (hyperbolic weigher)
    e = np.linspace(0.1, 0.5, 5)
    top_swapped = selectors.weighted_tau(np.array([4.0, 5.0, 3.0, 2.0, 1.0]), e)
    bottom_swapped = selectors.weighted_tau(np.array([5.0, 4.0, 3.0, 1.0, 2.0]), e)
    assert top_swapped < bottom_swapped < 1
    # nothing to compare: all scores or all errors tie
    assert np.isnan(selectors.weighted_tau(np.zeros(4), e[:4]))
    assert np.isnan(selectors.weighted_tau(e[:4], np.zeros(4)))
    # against scipy directly, with tied errors and tied scores (as in small test splits)
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(3, 12))
        err = rng.integers(0, 5, n) / 10
        score = rng.integers(0, 4, n).astype(float)
        if np.ptp(err) == 0 or np.ptp(score) == 0:
            continue
        assert selectors.weighted_tau(score, err) == pytest.approx(weightedtau(score, -err).statistic)


def test_regret_relative_increase_and_hit_rates_by_hand():
    # 3 experts x 2 tasks; expert 2 is not a candidate for task 1
    errors = np.array([[0.10, 0.40],
                       [0.20, 0.30],
                       [0.30, 0.00]])
    n_test = np.array([9.0, 9.0])
    cand = np.array([[True, True], [True, True], [True, False]])
    rankings = [np.array([1, 0, 2]), np.array([0, 1])]
    scores = np.array([[2.0, 1.0], [3.0, 0.0], [1.0, 5.0]])
    m = selectors.task_metrics(rankings, errors, n_test, cand, np.arange(2), scores)
    np.testing.assert_allclose(m["regret"], [0.20 - 0.10, 0.40 - 0.30])
    smooth = lambda e: (e * 9 + 0.5) / 10  # noqa: E731
    np.testing.assert_allclose(m["rel"], [smooth(0.2) / smooth(0.1) - 1, smooth(0.4) / smooth(0.3) - 1])
    np.testing.assert_array_equal(m["top1"], [0, 0])
    np.testing.assert_array_equal(m["top3"], [1, 1])
    # task 0: scores order 1, 0, 2 against accuracy 0, 1, 2; task 1: two candidates, reversed
    assert m["tau"][0] == pytest.approx(weightedtau([2.0, 3.0, 1.0], [-0.1, -0.2, -0.3]).statistic)
    assert m["tau"][1] == pytest.approx(-1.0)
    s = selectors.summarise(m)
    assert s["regret"] == pytest.approx(0.1) and s["tau"] == pytest.approx(np.mean(m["tau"]))
    assert s["ratio_of_means"] == pytest.approx((0.2 + 0.4) / (0.1 + 0.3) - 1)


def test_the_chance_selector_reports_exact_expectations():
    errors = np.array([[0.1, 0.2], [0.2, 0.2], [0.4, 0.5], [0.5, 0.1]])
    n_test = np.array([10.0, 10.0])
    cand = np.ones((4, 2), bool)
    m = selectors.create("chance").metrics(None, None, errors, n_test, cand, np.arange(2))
    np.testing.assert_allclose(m["regret"], [np.mean([0.1, 0.2, 0.4, 0.5]) - 0.1,
                                             np.mean([0.2, 0.2, 0.5, 0.1]) - 0.1])
    np.testing.assert_allclose(m["top1"], [1 / 4, 1 / 4])
    np.testing.assert_allclose(m["top3"], [3 / 4, 3 / 4])  # 1 - C(3, 3) / C(4, 3)
    assert np.isnan(m["tau"]).all()  # no scores given
    # its tau is measured from its random scores; with no tied errors its mean is 0
    t = 400
    errs = np.random.default_rng(1).random((6, t))
    tasks = selectors.Tasks(np.zeros((t, 1)), np.zeros((6, t)), rng=np.random.default_rng(2))
    scores = selectors.create("chance").score(selectors.Experts(list("abcdef"), np.zeros((6, 1)), 1.0,
                                                                 np.zeros(6)), tasks)
    taus = selectors.create("chance").metrics(None, scores, errs, np.full(t, 10.0),
                                              np.ones((6, t), bool), np.arange(t))["tau"]
    assert abs(taus.mean()) < 3 * taus.std() / np.sqrt(t)


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_tasks():
    rng = np.random.default_rng(3)
    widths = []
    for n in (20, 320):
        values = rng.normal(0.5, 0.2, n)
        lo, hi = selection.bootstrap_interval(values, selection.bootstrap_indices(n, 2000, 0))
        assert lo < values.mean() < hi
        widths.append(hi - lo)
        # seeded: the same seed, the same interval
        assert (lo, hi) == selection.bootstrap_interval(values, selection.bootstrap_indices(n, 2000, 0))
    assert 0.15 < widths[1] / widths[0] < 0.4  # about 1 / sqrt(16)
    # undefined tasks (NaN) are left out of each resample's mean
    values = np.array([0.0, 1.0, np.nan, np.nan])
    lo, hi = selection.bootstrap_interval(values, selection.bootstrap_indices(4, 500, 0))
    assert 0.0 <= lo < 0.5 < hi <= 1.0


def test_paired_differences_cancel_what_the_tasks_share():
    """Two selectors whose per-task metrics share a large task effect and differ by 0.1 on
    every task: each mean's own interval holds the other mean, the paired interval of the
    difference sits tightly around 0.1."""
    rng = np.random.default_rng(5)
    n = 60
    shared = rng.gamma(1.0, 1.0, n)
    a, b = shared + 0.1 + rng.normal(0, 0.01, n), shared
    resamples = selection.bootstrap_indices(n, 2000, 0)
    lo_a, hi_a = selection.bootstrap_interval(a, resamples)
    lo_b, hi_b = selection.bootstrap_interval(b, resamples)
    assert lo_a < b.mean() < a.mean() < hi_b  # unpaired, the order is not established
    means = {"x": dict.fromkeys(selection.PAIRED_METRICS, a),
             "y": dict.fromkeys(selection.PAIRED_METRICS, b)}
    d = selection.paired_differences(means, resamples, pairs=(("x", "y"), ("y", "x"), ("x", "z")))
    assert set(d) == {"x - y", "y - x"}  # a pair with a selector not evaluated is left out
    mean, lo, hi = d["x - y"]["regret"]
    assert mean == pytest.approx((a - b).mean()) and 0.09 < lo < mean < hi < 0.11
    assert d["y - x"]["tau"] == pytest.approx([-mean, -hi, -lo], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# a constructed library file


def write_library(path: Path, *, new_scores: bool = True) -> dict:
    """24 tasks in 3 families, an expert per family (trained on 2 of its tasks) + ImageNet.
    Each family's expert is best on its tasks; logme and knn follow the errors with noise,
    hscore follows them exactly, leep backwards, nce is noise."""
    rng = np.random.default_rng(0)
    centres = rng.gamma(1.0, 1.0, (len(FAMILIES), DIM)) * 1e-3 + 1e-5
    con = store.connect(path, DIM)
    con.execute(store.expert_schema(DIM))
    for name in NEW_SCORES:  # present in today's schema; absent in files made before them
        for column in (name, f"{name}_seconds"):
            con.execute(f"ALTER TABLE feature_scores {'ADD' if new_scores else 'DROP'} COLUMN "
                        f"IF {'NOT ' if new_scores else ''}EXISTS {column}"
                        + (" DOUBLE" if new_scores else ""))
    store.set_info(con, library="constructed", probe="tiny", methods=["rademacher"], input_size=32,
                   seed=0, filters=DIM)
    tasks, values = [], {}
    for f, family in enumerate(FAMILIES):
        for i in range(TASKS_PER_FAMILY):
            t = f"{family}/{i}"
            tasks.append(t)
            values[t] = (centres[f] * rng.lognormal(0, 0.3, DIM)).astype(np.float32)
            con.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ['0', '1'], [60, 60], 100, ?, '{}')",
                        [t, family, t, [family, t], N_TEST])
            con.execute("INSERT INTO embeddings VALUES (?, 'rademacher', ?, 1e-5, ?, 2.0, '{}')",
                        [t, store.encode(values[t]), float(values[t].sum())])
    experts = {f"expert/{fam}": [f"{fam}/0", f"{fam}/1"] for fam in FAMILIES}
    experts[IMAGENET_EXPERT] = []
    errors = {}
    for e, sources in experts.items():
        value = (np.mean([values[t] for t in sources], 0) if sources
                 else np.full(DIM, 1e-5, np.float32))
        con.execute("INSERT INTO experts VALUES (?, ?, ?, ?, '{}')",
                    [e, e, "imagenet" if not sources else "finetuned", sources])
        con.execute("INSERT INTO expert_embeddings VALUES (?, ?, 1e-5, ?)",
                    [e, store.encode(value), float(value.sum())])
        for t in tasks:
            own = e == f"expert/{t.split('/')[0]}"
            err = (0.05 if own else 0.3 if e == IMAGENET_EXPERT else 0.4) + rng.uniform(0, 0.05)
            errors[(e, t)] = err
            con.execute("INSERT INTO performance VALUES (?, ?, ?, ?, 1.0)", [e, t, err, err / 2])
            row = [e, t, -err + rng.normal(0, 0.05), 1 - err + rng.normal(0, 0.05),
                   SECONDS["feature"], SECONDS["logme"], SECONDS["knn"]]
            if new_scores:
                row += [-err, SECONDS["hscore"], err, SECONDS["leep"], rng.normal(), SECONDS["nce"]]
            con.execute(f"INSERT INTO feature_scores VALUES ({', '.join('?' * len(row))})", row)
    con.close()
    return {"tasks": tasks, "experts": experts, "errors": errors}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    db = tmp_path_factory.mktemp("selection") / "lib.duckdb"
    truth = write_library(db)
    con = duckdb.connect(str(db))
    try:
        # Model2Vec's fit is the slow part and no test here is about it: few steps
        summary = selection.evaluate(con, seeds=2, folds=2, progress=False, m2v_options=M2V_FAST)
    finally:
        con.close()
    return {"db": db, "summary": summary, **truth}


def test_evaluate_reports_tau_and_regret_with_intervals(evaluated):
    results = evaluated["summary"]["selectors"]
    assert set(results) == set(selectors.SELECTORS)
    assert evaluated["summary"]["unavailable"] == {}
    perfect, backwards = results["hscore"], results["leep"]
    assert perfect["tau"] == pytest.approx(1.0) and perfect["tau_ci"] == pytest.approx([1.0, 1.0])
    assert perfect["regret"] == pytest.approx(0.0) and perfect["top1"] == 1.0
    assert perfect["relative_error_increase"] == pytest.approx(0.0)
    assert backwards["tau"] == pytest.approx(-1.0)
    # leep picks the worst candidate: regret = mean over tasks of worst - best (novel experts)
    worst_minus_best = []
    for t in evaluated["tasks"]:
        cand = [v for (e, task), v in evaluated["errors"].items()
                if task == t and t not in evaluated["experts"][e]]
        worst_minus_best.append(max(cand) - min(cand))
    assert backwards["regret"] == pytest.approx(np.mean(worst_minus_best))
    for name, r in results.items():
        assert r["tau_tasks"] == len(evaluated["tasks"])
        for metric in ("relative_error_increase", "regret", "tau"):
            lo, hi = r[f"{metric}_ci"]
            assert lo - 1e-12 <= r[metric] <= hi + 1e-12, (name, metric)
            assert r[f"{metric}_std"] >= 0
    # the embedding finds the family's expert more often than chance, and orders better
    assert results["task2vec"]["top1"] > results["chance"]["top1"]
    assert results["task2vec"]["tau"] > results["chance"]["tau"]
    # each transfer score costs every expert's features plus the score: 4 x (0.5 + s)
    for name in ("logme", "knn", *NEW_SCORES):
        assert results[name]["cost"]["input_s"] == pytest.approx(4 * (SECONDS["feature"] + SECONDS[name]))
    # paired differences: the difference of the two means, with an interval that holds it
    paired = evaluated["summary"]["paired"]
    assert set(paired) == {f"{a} - {b}" for a, b in selection.PAIRED}
    for pair, by_metric in paired.items():
        a, b = pair.split(" - ")
        for metric, (mean, lo, hi) in by_metric.items():
            assert mean == pytest.approx(results[a][metric] - results[b][metric]), (pair, metric)
            assert lo - 1e-12 <= mean <= hi + 1e-12, (pair, metric)
    text = selection.table1(evaluated["summary"])
    assert "weighted tau" in text and "regret" in text and "model2vec - task2vec_asym" in text
    assert all(any(line.startswith(n) for line in text.splitlines()) for n in NEW_SCORES)


def test_the_new_metrics_are_stored_with_the_results(evaluated):
    con = duckdb.connect(str(evaluated["db"]), read_only=True)
    try:
        rows = {r[0]: json.loads(r[1]) for r in
                con.execute("SELECT selector, meta FROM selection_results").fetchall()}
        info = store.get_info(con)
    finally:
        con.close()
    results = evaluated["summary"]["selectors"]
    assert set(rows) == set(results)
    for name, meta in rows.items():
        for key in ("regret", "regret_ci", "regret_std", "tau", "tau_ci", "tau_std", "tau_tasks",
                    "relative_error_increase_ci"):
            assert meta[key] == pytest.approx(results[name][key]), (name, key)
        assert meta["bootstrap"]["resamples"] == selection.BOOTSTRAP_RESAMPLES
    assert "weightedtau" in info["selection"]["tau"] and info["selection"]["unavailable"] == {}
    assert info["selection"]["paired"] == evaluated["summary"]["paired"]  # floats round-trip in JSON


def test_a_library_without_the_new_scores_skips_those_selectors(tmp_path):
    db = tmp_path / "old.duckdb"
    write_library(db, new_scores=False)
    con = duckdb.connect(str(db))
    try:
        data = selection.load_selection_data(con)
        assert set(data.unavailable) == set(NEW_SCORES)
        assert "no hscore column" in data.unavailable["hscore"]
        assert set(data.transfer) == {"logme", "knn"}
        summary = selection.evaluate(con, seeds=1, folds=2, progress=False, m2v_options=M2V_FAST)
        stored = {r[0] for r in con.execute("SELECT selector FROM selection_results").fetchall()}
    finally:
        con.close()
    assert stored == set(selectors.SELECTORS) - set(NEW_SCORES) == set(summary["selectors"])
    text = selection.table1(summary)
    assert "nce             not evaluated: feature_scores has no nce column" in text


def test_a_score_missing_for_some_pair_makes_its_selector_unavailable(evaluated, tmp_path):
    db = tmp_path / "gap.duckdb"
    shutil.copy(evaluated["db"], db)
    con = duckdb.connect(str(db))
    try:
        con.execute("UPDATE feature_scores SET nce = NULL WHERE task_id = 'a/3' AND expert_id = 'imagenet'")
        data = selection.load_selection_data(con)
    finally:
        con.close()
    assert set(data.unavailable) == {"nce"}
    assert data.unavailable["nce"].startswith(f"1 of {4 * 24} expert-task pairs have no nce score")
    # an older file opened for writing gains the columns, empty: the same as absent
    con = duckdb.connect(str(db))
    try:
        con.execute("UPDATE feature_scores SET leep = NULL")
        data = selection.load_selection_data(con)
    finally:
        con.close()
    assert "no leep scores (the matrix was computed before leep existed" in data.unavailable["leep"]


def test_the_shipped_library_has_every_transfer_score():
    """data/demo.duckdb's matrix was filled with every transfer score: nothing is skipped."""
    db = Path(__file__).resolve().parents[1] / "data" / "demo.duckdb"
    con = duckdb.connect(str(db), read_only=True)
    try:
        data = selection.load_selection_data(con)
    finally:
        con.close()
    assert data.unavailable == {}
    assert {"logme", "knn", *NEW_SCORES} <= set(data.transfer) and "chance" in data.selectors
