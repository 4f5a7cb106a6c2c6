"""Task distances (paper section 3.3) against hand computations."""
import numpy as np
import pytest

from precompute import distances
from precompute.errors import Task2VecError

A = np.array([1.0, 2.0, 3.0])
B = np.array([3.0, 2.0, 1.0])
T0 = np.array([1.0, 1.0, 1.0])


def test_symmetric_matches_hand_computation():
    # x = A/(A+B) = [1/4, 1/2, 3/4], y = [3/4, 1/2, 1/4]
    # cos = (3/16 + 1/4 + 3/16) / (1/16 + 1/4 + 9/16) = 0.625 / 0.875
    assert distances.symmetric(A, B) == pytest.approx(1 - 0.625 / 0.875, abs=1e-6)


def test_symmetric_is_symmetric_zero_on_self_and_scale_free():
    assert distances.symmetric(A, A) == pytest.approx(0.0, abs=1e-7)
    assert distances.symmetric(A, B) == pytest.approx(distances.symmetric(B, A))
    # multiplying both embeddings by the same constant (e.g. units) changes nothing
    assert distances.symmetric(10 * A, 10 * B) == pytest.approx(distances.symmetric(A, B))


def test_asymmetric_matches_hand_computation():
    # d_sym(A, T0): x = [1/2, 2/3, 3/4], y = [1/2, 1/3, 1/4]
    x = np.array([1 / 2, 2 / 3, 3 / 4])
    y = 1 - x
    d_a_t0 = 1 - x @ y / np.sqrt((x @ x) * (y @ y))
    expected = (1 - 0.625 / 0.875) - 0.15 * d_a_t0
    assert distances.asymmetric(A, B, T0) == pytest.approx(expected, abs=1e-6)
    assert distances.asymmetric(A, B, T0, alpha=0.5) == pytest.approx(
        (1 - 0.625 / 0.875) - 0.5 * d_a_t0, abs=1e-6)
    # a more complex source (farther from trivial) is brought closer
    assert distances.asymmetric(A, B, T0) < distances.symmetric(A, B)


def test_matrices_equal_pairwise_formula():
    rng = np.random.default_rng(0)
    E = rng.lognormal(size=(23, 5000)).astype(np.float32)
    E[3, :100] = 0.0  # silent filters in one task
    E[4, :100] = 0.0  # ... and in another: 0/0 counts as equal
    full = distances.symmetric_matrix(E)
    pairwise = np.array([[distances.symmetric(a, b) for b in E] for a in E])
    np.testing.assert_allclose(full, pairwise, atol=2e-5)
    assert np.array_equal(full, full.T) and np.all(np.diag(full) == 0)
    cross = distances.symmetric_matrix(E[:5], E[5:])
    np.testing.assert_allclose(cross, pairwise[:5, 5:], atol=2e-5)
    trivial = np.full(5000, 0.5, dtype=np.float32)
    asym = distances.asymmetric_matrix(E[:5], E, trivial, alpha=0.15)
    expected = np.array([[distances.asymmetric(a, b, trivial) for b in E] for a in E[:5]])
    np.testing.assert_allclose(asym, expected, atol=2e-5)
    per_source = distances.asymmetric_matrix(E[:5], E, np.tile(trivial, (5, 1)))
    np.testing.assert_allclose(per_source, expected, atol=2e-5)


def test_cosine_matrix_for_domain_embeddings():
    a = np.array([[1.0, 0.0], [0.0, -2.0], [3.0, 3.0]])
    d = distances.cosine_matrix(a)
    assert d[0, 1] == pytest.approx(1.0)
    assert d[0, 2] == pytest.approx(1 - 1 / np.sqrt(2))
    assert d[1, 2] == pytest.approx(1 + 1 / np.sqrt(2))


@pytest.mark.parametrize("a, b, phrase", [
    (np.ones(3), np.ones(4), "same probe"),
    (np.array([1.0, -1.0]), np.ones(2), "non-negative"),
    (np.array([1.0, np.nan]), np.ones(2), "finite"),
])
def test_bad_embeddings_are_refused(a, b, phrase):
    with pytest.raises(Task2VecError, match=phrase):
        distances.symmetric(a, b)
    with pytest.raises(Task2VecError, match=phrase):
        distances.symmetric_matrix(a, b)


def test_the_torch_variant_is_the_same_formula():
    """Model2Vec needs d_sym and d_asym differentiable: the torch variant against the numpy one."""
    import torch

    rng = np.random.default_rng(0)
    src, tgt = rng.gamma(1.0, 1.0, (3, 50)) + 1e-3, rng.gamma(1.0, 1.0, (4, 50)) + 1e-3
    sym = distances.symmetric_torch(torch.from_numpy(src)[:, None], torch.from_numpy(tgt)[None])
    np.testing.assert_allclose(sym.numpy(), [[distances.symmetric(a, b) for b in tgt] for a in src],
                               atol=1e-6)
    t0 = np.full_like(src, 0.5)
    asym = distances.asymmetric_torch(torch.from_numpy(src), torch.from_numpy(tgt),
                                      torch.from_numpy(t0), alpha=0.15)
    np.testing.assert_allclose(asym.numpy(), distances.asymmetric_matrix(src, tgt, t0[:1], 0.15),
                               atol=1e-5)


def test_asymmetric_from_symmetric_composes_the_two_terms():
    dsym = distances.symmetric_matrix(np.stack([A, B]), T0[None])
    complexity = distances.complexity(np.stack([A, B]), 1.0)  # isotropic trivial, as stored
    np.testing.assert_allclose(complexity, [distances.symmetric(A, T0), distances.symmetric(B, T0)],
                               atol=1e-6)
    np.testing.assert_allclose(distances.asymmetric_from_symmetric(dsym, complexity, 0.15)[:, 0],
                               [distances.asymmetric(A, T0, T0), distances.asymmetric(B, T0, T0)],
                               atol=1e-6)
