"""The embedding-quality checks, on hand-made distance matrices."""
import numpy as np
import pytest

from precompute import analysis

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
