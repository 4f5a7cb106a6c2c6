"""Task distances (paper section 3.3).

Symmetric TASK2VEC distance::

    d_sym(F_a, F_b) = d_cos(F_a / (F_a + F_b), F_b / (F_a + F_b))      (element-wise division)

Asymmetric TASK2VEC "distance" from a source task a (e.g. an expert's training task) to a
target task b, with t0 the trivial embedding of a::

    d_asym(a -> b) = d_sym(a, b) - alpha * d_sym(a, t0)                  (paper: alpha = 0.15)

Because F_b / (F_a + F_b) = 1 - x with x = F_a / (F_a + F_b), the cosine needs only sum(x) and
sum(x^2); the all-pairs kernel streams both embedding matrices once per tile with numba.
Domain embeddings (mean activations, any sign) use the plain cosine distance.
"""
from __future__ import annotations

import numba
import numpy as np

from .errors import Task2VecError

DEFAULT_ALPHA = 0.15


def _as_matrix(x, name: str) -> np.ndarray:
    x = np.asarray(getattr(x, "values", x), dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise Task2VecError(f"{name} must be one embedding or a [tasks, filters] matrix")
    if not np.isfinite(x).all() or (x < 0).any():
        raise Task2VecError(f"{name} must be finite and non-negative (a Fisher embedding)")
    return np.ascontiguousarray(x)


def _cosine_distance_from_sums(sx: np.ndarray, sxx: np.ndarray, d: int) -> np.ndarray:
    """d_cos(x, 1 - x) from sum(x), sum(x^2) over d coordinates."""
    dot = sx - sxx
    norm_y2 = d - 2.0 * sx + sxx
    denom = np.sqrt(np.maximum(sxx * norm_y2, 1e-30))
    return np.clip(1.0 - dot / denom, 0.0, 2.0)


def symmetric(a, b) -> float:
    """d_sym between two embeddings (arrays or :class:`TaskEmbedding`), by the formula."""
    a, b = _as_matrix(a, "a")[0].astype(np.float64), _as_matrix(b, "b")[0].astype(np.float64)
    if a.shape != b.shape:
        raise Task2VecError(f"embeddings have different sizes ({a.size} and {b.size}): "
                            "were they made with the same probe?")
    total = a + b
    safe = np.where(total > 0, total, 1.0)
    x = np.where(total > 0, a / safe, 0.5)  # 0/0: both filters silent, treat as equal
    return float(_cosine_distance_from_sums(x.sum(), np.square(x).sum(), a.size))


def asymmetric(source, target, trivial, alpha: float = DEFAULT_ALPHA) -> float:
    """d_asym(source -> target) = d_sym(source, target) - alpha * d_sym(source, trivial)."""
    return symmetric(source, target) - alpha * symmetric(source, trivial)


# error_model='numpy': no ZeroDivisionError check, so the loop vectorises (about 10x faster).
@numba.njit(fastmath=True, error_model="numpy", cache=True)
def _ratio_sums(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """sum(x), sum(x^2) of x = a / (a + b); a tiny epsilon keeps 0/0 at 1/2 without a branch."""
    eps = np.float32(1e-30)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    for k in range(a.shape[0]):
        x = (a[k] + eps) / (a[k] + b[k] + eps + eps)
        s1 += x
        s2 += x * x
    return s1, s2


@numba.njit(parallel=True, error_model="numpy", cache=True)
def _pair_sums(a: np.ndarray, b: np.ndarray, same: bool, sx: np.ndarray, sxx: np.ndarray) -> None:
    """sx[i, j] = sum_k x, sxx[i, j] = sum_k x^2 with x = a[i,k] / (a[i,k] + b[j,k]).

    Tiled over rows and filters so a tile of ``a`` stays in cache while ``b`` streams past;
    with ``same`` (b is a) only j >= i is computed.
    """
    n, d = a.shape
    m = b.shape[0]
    chunk = 4096
    tile = 16
    n_tiles = (n + tile - 1) // tile
    for k0 in range(0, d, chunk):
        k1 = min(k0 + chunk, d)
        for t in numba.prange(n_tiles):
            i0 = t * tile
            i1 = min(i0 + tile, n)
            for j in range(i0 if same else 0, m):
                bj = b[j, k0:k1]
                for i in range(i0, min(i1, j + 1) if same else i1):
                    s1, s2 = _ratio_sums(a[i, k0:k1], bj)
                    sx[i, j] += s1
                    sxx[i, j] += s2


def symmetric_matrix(a, b=None) -> np.ndarray:
    """All-pairs d_sym: ``a`` ``[n, d]`` against ``b`` ``[m, d]`` (default ``a``) -> ``[n, m]``."""
    a = _as_matrix(a, "a")
    b = a if b is None else _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise Task2VecError(f"embeddings have different sizes ({a.shape[1]} and {b.shape[1]}): "
                            "were they made with the same probe?")
    sx = np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    sxx = np.zeros_like(sx)
    same = b is a
    _pair_sums(a, b, same, sx, sxx)
    if same:  # only the upper triangle was computed
        lower = np.tril_indices(a.shape[0], -1)
        sx[lower], sxx[lower] = sx.T[lower], sxx.T[lower]
    out = _cosine_distance_from_sums(sx, sxx, a.shape[1])
    if same:
        np.fill_diagonal(out, 0.0)
    return out


def complexity(sources, trivial) -> np.ndarray:
    """``[n_sources]`` d_sym(source, t0), the term d_asym subtracts (the source's distance from
    the trivial embedding). ``trivial`` is one trivial embedding shared by all sources, one per
    source ``[n, d]``, or a number (the isotropic trivial embedding's value, as stored)."""
    sources = _as_matrix(sources, "sources")
    if isinstance(trivial, (int, float, np.number)):
        trivial = np.full((1, sources.shape[1]), float(trivial), np.float32)
    trivial = _as_matrix(trivial, "trivial")
    if trivial.shape[0] == 1:
        return symmetric_matrix(sources, trivial)[:, 0]
    if trivial.shape == sources.shape:
        return np.array([symmetric(s, t) for s, t in zip(sources, trivial)])
    raise Task2VecError("trivial must be one embedding or one per source")


def asymmetric_from_symmetric(dsym: np.ndarray, source_complexity: np.ndarray,
                              alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """d_asym(source -> target) from ``[n_sources, n_targets]`` d_sym and :func:`complexity`:
    the one place the two terms are composed (callers that already hold d_sym reuse it)."""
    return dsym - alpha * source_complexity[:, None]


def asymmetric_matrix(sources, targets, trivial, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """``[n_sources, n_targets]`` of d_asym(source -> target).

    ``trivial`` is one trivial embedding shared by all sources, or one per source ``[n, d]``.
    """
    return asymmetric_from_symmetric(symmetric_matrix(sources, targets),
                                     complexity(sources, trivial), alpha)


def symmetric_torch(a, b):
    """d_sym between broadcast positive torch tensors over the last axis, differentiable (for
    Model2Vec's gradient); the same formula as :func:`symmetric`, without its 0/0 handling
    and clipping (tested against it)."""
    import torch

    x = a / (a + b)
    k = x.shape[-1]
    sx, sxx = x.sum(-1), (x * x).sum(-1)
    return 1 - (sx - sxx) / torch.sqrt((sxx * (k - 2 * sx + sxx)).clamp_min(1e-30))


def asymmetric_torch(sources, targets, trivial, alpha: float = DEFAULT_ALPHA):
    """``[n_sources, n_targets]`` d_asym(source -> target) in torch (see :func:`asymmetric_matrix`);
    ``trivial`` ``[n_sources, d]``, one trivial embedding per source."""
    return (symmetric_torch(sources[:, None], targets[None])
            - alpha * symmetric_torch(sources, trivial)[:, None])


def cosine_matrix(a, b=None) -> np.ndarray:
    """Plain cosine distance, for domain embeddings (mean activations of any sign)."""
    a = np.asarray(getattr(a, "values", a), dtype=np.float64)
    a = a[None] if a.ndim == 1 else a
    b = a if b is None else np.asarray(getattr(b, "values", b), dtype=np.float64)
    b = b[None] if b.ndim == 1 else b
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
    return np.clip(1.0 - an @ bn.T, 0.0, 2.0)
