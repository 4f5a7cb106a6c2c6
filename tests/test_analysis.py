"""The embedding-quality checks, on hand-made distance matrices."""
import numpy as np
import pytest

from precompute import analysis, store

PATHS = [("A", "B", "x"), ("A", "B", "y"), ("A", "C", "z"), ("D", "w")]


def test_taxonomy_matrix_and_correlation():
    tax = analysis.taxonomy_matrix(PATHS)
    assert tax[0, 1] == 2 and tax[0, 2] == 4 and tax[0, 3] == 5 and tax[3, 3] == 0
    rho, _ = analysis.taxonomy_correlation(tax * 0.1, tax)  # a distance ordered like the taxonomy
    assert rho == pytest.approx(1.0)
    rho, _ = analysis.taxonomy_correlation(-tax, tax)
    assert rho == pytest.approx(-1.0)


def test_neighbourhood_curve_by_hand():
    tax = analysis.taxonomy_matrix(PATHS)
    dist = np.array([[0, 3, 1, 2], [3, 0, 1, 2], [1, 1, 0, 2], [2, 2, 1, 0]], float)
    c = analysis.neighbourhood_curve(dist, tax)
    # nearest by dist: 0->2 (tax 4), 1->2 (4), 2->0 or 1 (stable: 0, tax 4), 3->2 (5)
    assert c["embedding"][0] == pytest.approx((4 + 4 + 4 + 5) / 4)
    # by taxonomy: 0->1 (2), 1->0 (2), 2->0 (4), 3->? (5 to 0, first in order)
    assert c["taxonomy"][0] == pytest.approx((2 + 2 + 4 + 5) / 4)
    assert c["chance"][0] == pytest.approx(tax[~np.eye(4, dtype=bool)].mean())
    # all neighbours: every curve ends at chance
    assert c["embedding"][-1] == pytest.approx(c["chance"][-1])
    assert c["taxonomy"][-1] == pytest.approx(c["chance"][-1])


def test_related_precision_by_hand():
    ids = ["a", "b", "c", "d"]
    dist = np.array([[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]], float)
    related = [{"b"}, {"c"}, set(), {"c", "a"}]
    # k=1: a->b related (1), b->a not (0), c skipped (no related), d->c related (1)
    assert analysis.related_precision(dist, ids, related, k=1) == pytest.approx(2 / 3)
    # k=2: a->{b,c}: 1/2; b->{a,d}: 0; d->{c,b}: 1/2
    assert analysis.related_precision(dist, ids, related, k=2) == pytest.approx(1 / 3)


def test_bootstrap_interval_over_tasks_and_the_size_correlation():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 2))
    tax = np.linalg.norm(points[:, None] - points[None], axis=-1)
    assert analysis.bootstrap_correlation(tax, tax, draws=50) == pytest.approx((1.0, 1.0))
    noise = rng.random((30, 30))
    noise = noise + noise.T
    lo, hi = analysis.bootstrap_correlation(noise, tax, draws=200)
    point = analysis.taxonomy_correlation(noise, tax)[0]
    assert lo < point < hi and lo < 0 < hi  # unrelated distances: an interval around 0
    sizes = np.exp(rng.normal(size=30))
    by_size = np.abs(np.log(sizes)[:, None] - np.log(sizes)[None])
    assert analysis.size_correlation(by_size, sizes) == pytest.approx(1.0)
    assert abs(analysis.size_correlation(tax, sizes)) < 0.3


def _library_file(path, tasks, fisher, domain):
    """A library file with the given tasks [(id, family, taxonomy, related, num_train)] and
    embeddings, written through the store's schema."""
    import json

    from precompute import store

    con = store.connect(path, fisher.shape[1])
    store.set_info(con, methods=["rademacher", "domain"], filters=fisher.shape[1])
    for (tid, family, tax, related, n), f, d in zip(tasks, fisher, domain):
        con.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ['a', 'b'], [1, 1], ?, 10, ?)",
                    [tid, family, tid, list(tax), n, json.dumps({"related": related})])
        for method, value in (("rademacher", f), ("domain", d)):
            con.execute("INSERT INTO embeddings VALUES (?, ?, ?, 1e-5, 1.0, 0.0, '{}')",
                        [tid, method, store.encode(value)])
    con.close()


def test_report_checks_the_emoji_taxonomy_and_its_shared_images(tmp_path):
    """Three groups of three subgroups: the Fisher embeddings follow the taxonomy (a subgroup
    is its group's embedding, slightly moved), the domain embeddings are noise."""
    rng = np.random.default_rng(0)
    tasks, fisher = [], []
    for g in range(3):
        base = rng.uniform(1, 2, 64)
        subs = [f"emoji/g{g}/s{s}" for s in range(3)]
        tasks.append((f"emoji/g{g}", "emoji", ("emoji", f"G{g}"), subs, 100))
        fisher.append(base)
        for s, sub in enumerate(subs):
            tasks.append((sub, "emoji", ("emoji", f"G{g}", f"S{s}"), [f"emoji/g{g}"],
                          int(rng.integers(50, 5000))))
            fisher.append(base * rng.uniform(0.95, 1.05, 64))
    db = tmp_path / "lib.duckdb"
    _library_file(db, tasks, np.array(fisher, np.float32), rng.uniform(0, 1, (12, 64)).astype(np.float32))
    out = analysis.report(db, k=3, draws=200)
    t = out["taxonomy"]["emoji"]
    assert t["tasks"] == 12 and "glyphs" not in out["taxonomy"]
    assert t["spearman"] > 0.5 and t["interval"][0] < t["spearman"] < t["interval"][1]
    assert abs(t["spearman_domain"]) < 0.3
    # a group task's 3 nearest are its 3 subgroups (1 related of 1); a subgroup's are its group
    # and its 2 siblings (1 related of 3): (3 x 1 + 9 x 1/3) / 12
    s = out["emoji_shared"]
    assert s["task2vec"] == pytest.approx(0.5)
    assert s["chance"] == pytest.approx((3 * 3 / 11 + 9 * 1 / 11) / 12)
    assert "shared_domain" not in out and "one_pool" not in out
    text = analysis.markdown(out)
    assert "Taxonomy (emoji, 12 tasks)" in text and "Shared images" in text


def test_diversity_summary_counts_the_undefined_and_correlates_with_size(tmp_path):
    """Eight tasks whose coefficient grows with their size and falls with their norm, and one
    too small for a coefficient: the summary must say so, number for number."""
    import json

    import duckdb

    rng = np.random.default_rng(1)
    sizes = [64, 100, 200, 400, 800, 1600, 3200, 6400]
    # the first five are one-image-pool tasks (the coefficient at equal size is read there)
    tasks = [(f"fashion/t{i}", "fashion_mnist", ("fashion", "all-images" if i < 5 else "x"), [], n)
             for i, n in enumerate(sizes)]
    tasks.append(("fashion/small", "fashion_mnist", ("fashion", "x"), [], 30))
    db = tmp_path / "lib.duckdb"
    _library_file(db, tasks, rng.uniform(1, 2, (9, 16)).astype(np.float32),
                  rng.uniform(0, 1, (9, 16)).astype(np.float32))
    con = duckdb.connect(str(db))
    for i, n in enumerate(sizes):
        con.execute("UPDATE embeddings SET norm = ?, meta = ? WHERE task_id = ? AND method = 'rademacher'",
                    [1000.0 - n / 10, json.dumps({"diversity": {"value": 0.1 + i / 100, "batch": 32}}),
                     f"fashion/t{i}"])
    con.execute("UPDATE embeddings SET meta = ? WHERE task_id = 'fashion/small' AND method = 'rademacher'",
                [json.dumps({"diversity": {"value": None, "batch": 32, "reason": "too few"}})])
    con.close()
    d = analysis.report(db, draws=0)["diversity"]
    assert d["tasks"] == 9 and d["undefined"] == {"too few": 1}
    s = d["all"]
    assert s["tasks"] == 8 and s["quartiles"][0] == pytest.approx(0.1) and s["quartiles"][-1] == pytest.approx(0.17)
    assert s["size"] == pytest.approx(1.0) and s["norm"] == pytest.approx(-1.0)
    assert "classes" not in s  # every task has 2 classes: no rank correlation
    assert d["families"]["fashion_mnist"]["tasks"] == 8
    assert "error" not in s  # no performance matrix in the file
    assert d["one_pool"]["tasks"] == 5 and d["one_pool"]["quartiles"][-1] == pytest.approx(0.14)
    text = analysis.markdown(analysis.report(db, draws=0))
    assert "Diversity coefficient (9 tasks" in text and "no value for 1 tasks: too few" in text
    # with a matrix: the best expert's error (the minimum over experts) falls as the
    # coefficient rises, while the other expert's error rises with it
    con = duckdb.connect(str(db))
    con.execute(store.expert_schema(16))
    for i in range(len(sizes)):
        con.executemany("INSERT INTO performance VALUES (?, ?, ?, 0.0, 1.0)",
                        [("e1", f"fashion/t{i}", 0.5 - i / 100), ("e2", f"fashion/t{i}", 0.6 + i / 100)])
    con.close()
    d = analysis.report(db, draws=0)["diversity"]
    assert d["all"]["error"] == pytest.approx(-1.0) and d["one_pool"]["error"] == pytest.approx(-1.0)
    assert "| -1.000 |" in analysis.markdown({"tasks": 9, "diversity": d})


def test_a_file_without_diversity_has_no_diversity_summary(tmp_path):
    rng = np.random.default_rng(2)
    tasks = [(f"fashion/t{i}", "fashion_mnist", ("fashion", "x"), [], 100) for i in range(6)]
    db = tmp_path / "lib.duckdb"
    _library_file(db, tasks, rng.uniform(1, 2, (6, 16)).astype(np.float32),
                  rng.uniform(0, 1, (6, 16)).astype(np.float32))
    assert analysis.diversity(db) is None and "diversity" not in analysis.report(db, draws=0)
