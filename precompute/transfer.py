"""Transferability of an expert's features to a task (paper section 4.2 and its peers): the
linear probe (the performance matrix's test error), LogME and leave-one-out k-NN accuracy.

Peers: each takes features ``[N, D]`` and labels and returns one number; nothing here reads
or writes the library file. ``experts.compute_matrix`` computes all three per (expert, task);
the ``logme`` and ``knn`` selectors (:mod:`precompute.selectors`) rank experts by the stored
scores.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

LINEAR_L2 = 1e-2  # L2 weight of the linear classifier (mean cross-entropy + l2/2 ||W||^2)
LINEAR_MAX_ITER = 100
KNN_K = 5


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 num_classes: int, l2: float = LINEAR_L2) -> tuple[float, float]:
    """(train error, test error) of multinomial logistic regression on standardised features.

    Mean cross-entropy + (l2 / 2) ||W||^2, full-batch L-BFGS from zero: deterministic. With
    fewer images than features the weights are solved as W = X^T A (the L2 optimum lies in the
    span of the training features), an n x n problem with the same solution.
    """
    x = torch.from_numpy(train_x).double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    xt = (torch.from_numpy(test_x).double() - mean) / std
    y = torch.from_numpy(train_y)
    dual = x.shape[0] < x.shape[1]
    if dual:
        gram, test_gram = x @ x.T, xt @ x.T
    w = torch.zeros(x.shape[0] if dual else x.shape[1], num_classes, dtype=torch.float64,
                    requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=LINEAR_MAX_ITER, history_size=10,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

    def logits(test: bool):
        if dual:
            return (test_gram if test else gram) @ w + b
        return (xt if test else x) @ w + b

    def closure():
        opt.zero_grad()
        penalty = (w * (gram @ w)).sum() if dual else w.square().sum()
        loss = F.cross_entropy(logits(False), y) + 0.5 * l2 * penalty
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_err = float((logits(False).argmax(1) != y).double().mean())
        test_err = float((logits(True).argmax(1) != torch.from_numpy(test_y)).double().mean())
    return train_err, test_err


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> float:
    """Leave-one-out k-NN accuracy (cosine similarity, standardised features, majority vote)."""
    n = len(labels)
    if n < 2:
        return 0.0
    x = features - features.mean(0)
    x = x / np.maximum(x.std(0), 1e-6)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, n - 1)
    nn_idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    votes = np.zeros((n, int(labels.max()) + 1))
    np.add.at(votes, (np.repeat(np.arange(n), k), labels[nn_idx].ravel()), 1.0)
    return float((votes.argmax(1) == labels).mean())


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
