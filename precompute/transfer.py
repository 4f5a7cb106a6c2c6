"""Transferability of an expert's features to a task (paper section 4.2 and its peers): the
linear probe (the performance matrix's test error), LogME, leave-one-out k-NN accuracy,
H-score, and the two scores that read the expert's *source heads*, LEEP and NCE.

Peers: each takes features ``[N, D]`` (or the source heads' predictions) and labels and returns
one number, higher = more transferable; nothing here reads or writes the library file.
``experts.compute_matrix`` computes them all per (expert, task) on the task's train split; the
selectors of the same names (:mod:`precompute.selectors`) rank experts by the stored scores.

A multi-head expert (one linear head per source task over a shared tail) predicts on the
*concatenated* source label space: :func:`head_mixture` gives each head weight 1 / H, i.e.
theta(x) = (1/H) [softmax(head_1(x)), ..., softmax(head_H(x))] for LEEP, and for NCE each
image carries H hard labels (one per head, weight 1 / H). Softmax over all the concatenated
logits would not do: the heads are trained with the other heads' logits masked out, so the
offsets between heads are arbitrary.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

LINEAR_L2 = 1e-2  # L2 weight of the linear classifier (mean cross-entropy + l2/2 ||W||^2)
LINEAR_MAX_ITER = 100
KNN_K = 5
HSCORE_SHRINKAGE = "ledoit-wolf"  # the regularised H-score (Ibrahim et al. 2022); see hscore()


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
        if dual:  # ||W||^2 = tr(A^T G A): G A once, for the logits and the penalty
            ga = gram @ w
            loss = F.cross_entropy(ga + b, y) + 0.5 * l2 * (w * ga).sum()
        else:
            loss = F.cross_entropy(x @ w + b, y) + 0.5 * l2 * w.square().sum()
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
    # The eigenvalues sigma of f^T f and the left singular vectors u of f, from the smaller of
    # the two Gram matrices (an eigendecomposition of n x n or d x d: 10x faster than the SVD
    # of f at n = 1,000, d = 1,280, measured); directions with sigma ~ 0 fall into res0.
    if n <= d:
        sigma, u = np.linalg.eigh(f @ f.T)
    else:
        sigma, v = np.linalg.eigh(f.T @ f)
    keep = sigma > max(float(sigma.max()), 0.0) * 1e-12
    sigma = sigma[keep]
    u = u[:, keep] if n <= d else (f @ v[:, keep]) / np.sqrt(sigma)
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


# H-score (Bao et al., ICIP 2019), regularised (Ibrahim et al., ICLR 2023)


def ledoit_wolf_shrinkage(gram: np.ndarray, dim: int) -> float:
    """The Ledoit-Wolf shrinkage of the covariance of centred features, from their Gram matrix.

    With X ``[N, D]`` centred, S = X^T X / N and mu = tr(S) / D: delta = ||S - mu I||_F^2 / D,
    beta = (sum_i ||x_i||^4 / N - ||S||_F^2) / (N D) (as scikit-learn's
    ``ledoit_wolf_shrinkage``), shrinkage = min(beta, delta) / delta. Every term is a function
    of G = X X^T (||X^T X||_F = ||X X^T||_F), so it costs O(N^2), not O(N D^2).
    """
    n = gram.shape[0]
    trace = float(np.trace(gram)) / n  # tr(S)
    mu = trace / dim
    frob2 = float(np.square(gram).sum()) / n ** 2  # ||S||_F^2
    beta = (float(np.square(np.diag(gram)).sum()) / n - frob2) / (n * dim)
    delta = (frob2 - 2 * mu * trace + dim * mu ** 2) / dim
    beta = min(beta, delta)
    return 0.0 if beta <= 0 or delta <= 0 else beta / delta


def hscore(features: np.ndarray, labels: np.ndarray,
           shrinkage: float | str | None = HSCORE_SHRINKAGE) -> float:
    """H-score: how well the features separate the classes, relative to their spread.

    H(f) = tr(cov(f)^-1 cov(E[f | y])) (Bao et al. 2019, eq. 2), the between-class covariance
    Sigma_b = sum_c (n_c / N) (m_c - m)(m_c - m)^T over the feature covariance Sigma. With
    ``shrinkage`` alpha the covariance is shrunk towards mu I, mu = tr(Sigma) / D, and
    H_alpha = tr(((1 - alpha) Sigma + alpha mu I)^-1 (1 - alpha) Sigma_b) (Ibrahim et al.'s
    regularised H-score; "ledoit-wolf": alpha by :func:`ledoit_wolf_shrinkage`). Unregularised
    (``None`` or 0) it needs N > D: with fewer images than features the pseudo-inverse makes
    H = (classes - 1) for any features, which is why the shrunk form is the default here
    (N <= 1,000 train images, D = 1,280).

    Computed in image space: with X the centred features and G = X X^T, Woodbury gives
    M Sigma_alpha^-1 M^T = (M M^T - (M X^T)(b / a I + G)^-1 (X M^T)) / b, a = (1 - alpha) / N,
    b = alpha mu, and M X^T and M M^T are sums of rows and blocks of G.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    n, d = f.shape
    x = f - f.mean(0)
    classes, index = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        return 0.0
    onehot = np.eye(len(classes))[index]  # [N, C]
    counts = onehot.sum(0)
    if shrinkage is None or shrinkage == 0:
        if n <= d:
            raise ValueError("the unregularised H-score needs more images than features; "
                             "use shrinkage")
        cov = x.T @ x / n
        means = (onehot.T @ x) / counts[:, None]  # [C, D], centred
        between = (means.T * (counts / n)) @ means
        return float(np.trace(np.linalg.solve(cov, between)))
    gram = x @ x.T
    alpha = ledoit_wolf_shrinkage(gram, d) if shrinkage == "ledoit-wolf" else float(shrinkage)
    if not 0 <= alpha <= 1:
        raise ValueError(f"H-score shrinkage must lie in [0, 1], not {alpha}")
    if alpha == 0:
        if n > d:
            return hscore(f, y, None)
        alpha = 1e-6  # Ledoit-Wolf found nothing to shrink, but Sigma is singular (N <= D)
    if alpha == 1:
        return 0.0  # all shrinkage: Sigma_b is multiplied by 1 - alpha = 0
    a, b = (1 - alpha) / n, alpha * float(np.trace(gram)) / n / d
    if b <= 0:
        return 0.0  # constant features
    # rows of M = sqrt(n_c / N) m_c: M X^T = W G with W = diag(sqrt(n_c / N) / n_c) onehot^T
    w = onehot.T * (np.sqrt(counts / n) / counts)[:, None]  # [C, N]
    mx = w @ gram  # [C, N]
    mm = mx @ w.T  # M M^T [C, C]
    inner = np.linalg.solve(gram + (b / a) * np.eye(n), mx.T)  # (b/a I + G)^-1 X M^T
    return float((1 - alpha) * (np.trace(mm) - np.trace(mx @ inner)) / b)


# LEEP (Nguyen et al., ICML 2020) and NCE (Tran et al., ICCV 2019): the source heads' predictions


def head_mixture(logits: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The source distribution of a multi-head expert and its hard labels.

    ``logits`` ``[N, Z]``: the concatenated heads' logits, head h owning columns
    ``offsets[h]:offsets[h + 1]`` (``offsets`` ``[H + 1]``, from 0 to Z). Returns theta ``[N, Z]``,
    theta(x) = (1/H) [softmax(head_1(x)), ..., softmax(head_H(x))] (rows sum to 1), and the hard
    labels ``[N, H]``, offsets[h] + argmax of head h (column indices in the same space).
    A single-head model (the ImageNet classifier) is offsets = [0, Z].
    """
    logits = np.asarray(logits, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    heads = len(offsets) - 1
    if heads < 1 or offsets[0] != 0 or offsets[-1] != logits.shape[1] or (np.diff(offsets) < 1).any():
        raise ValueError(f"offsets {offsets.tolist()} do not cut {logits.shape[1]} logits into heads")
    theta = np.empty_like(logits)
    hard = np.empty((len(logits), heads), dtype=np.int64)
    for h in range(heads):
        part = logits[:, offsets[h]:offsets[h + 1]]
        e = np.exp(part - part.max(1, keepdims=True))
        theta[:, offsets[h]:offsets[h + 1]] = e / e.sum(1, keepdims=True) / heads
        hard[:, h] = offsets[h] + part.argmax(1)
    return theta, hard


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """Log expected empirical prediction (Nguyen et al. 2020, eq. 2), in [-inf, 0].

    theta ``[N, Z]``: the source model's distribution over its labels z for each target image.
    Empirical joint P(y, z) = (1/N) sum_{i: y_i = y} theta_iz, conditional P(y | z) =
    P(y, z) / P(z), and LEEP = (1/N) sum_i log sum_z P(y_i | z) theta_iz.
    """
    theta = np.asarray(source_probs, dtype=np.float64)
    _, y = np.unique(np.asarray(labels), return_inverse=True)
    n = len(y)
    joint = np.zeros((y.max() + 1, theta.shape[1]))
    np.add.at(joint, y, theta)
    joint /= n
    pz = joint.sum(0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z)
    eep = (theta * cond[y]).sum(1)
    return float(np.log(np.maximum(eep, 1e-300)).mean())


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """Negative conditional entropy -H(Y | Z) (Tran et al. 2019, eq. 3), in [-log C, 0].

    ``source_labels``: the source model's hard label of each target image, ``[N]``, or ``[N, H]``
    for H heads, each image then counting 1/H under each of its H labels (the hard version of
    :func:`head_mixture`, so that -H(Y | Z) = the mean over heads of -H(Y | Z_h)). From the
    empirical joint P(y, z): NCE = sum_{y,z} P(y, z) log(P(y, z) / P(z)).
    """
    z = np.asarray(source_labels)
    z = z[:, None] if z.ndim == 1 else z
    _, y = np.unique(np.asarray(labels), return_inverse=True)
    n, heads = z.shape
    _, zi = np.unique(z.ravel(), return_inverse=True)
    joint = np.zeros((y.max() + 1, zi.max() + 1))
    np.add.at(joint, (np.repeat(y, heads), zi), 1.0 / (n * heads))
    pz = joint.sum(0)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / np.broadcast_to(pz, joint.shape)[nz])).sum())
