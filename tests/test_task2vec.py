"""TASK2VEC embeddings: correctness against exact computations and the paper's properties."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from precompute import EmbedConfig, TaskEmbedding, distances, embed, embed_methods, probes
from precompute.errors import Task2VecError
from precompute.task2vec import RESIDUALS, _Embedder, rademacher_residual
from precompute.tasks import TaskData, task_from_arrays

from conftest import SIDE, constant_task, tiny_probe


@pytest.fixture(scope="module")
def lite0():
    return probes.create("efficientnet_lite0")


def exact_fisher(probe, head, images: torch.Tensor) -> np.ndarray:
    """Diagonal FIM by enumerating every label: E_x sum_y p(y|x) (d log p(y|x) / dw)^2."""
    weights = [m.weight for _, m in probe.filter_layers()]
    for w in weights:
        w.requires_grad_(True)
    acc = [torch.zeros_like(w) for w in weights]
    for i, x in enumerate(probe.normalize(images)):
        log_p = F.log_softmax(head(probe.backbone(x[None]), torch.tensor([i])), -1)[0]
        for y, p in enumerate(log_p.exp().tolist()):
            grads = torch.autograd.grad(log_p[y], weights, retain_graph=True)
            for a, g in zip(acc, grads):
                a += p * g.square()
    for w in weights:
        w.requires_grad_(False)
    return torch.cat([(a.flatten(1).mean(1) if a.dim() > 1 else a) / len(images)
                      for a in acc]).numpy()


@pytest.mark.parametrize("method", ["montecarlo", "rademacher"])
@pytest.mark.parametrize("batch_size, samples", [(4, 24_000), (32, 96_000)])
def test_fisher_estimators_match_exact_fisher(digits, method, batch_size, samples):
    images, labels = digits
    task = task_from_arrays(images[:60], labels[:60] % 3, input_size=SIDE)
    run = _Embedder(task, tiny_probe(), EmbedConfig(input_size=SIDE, fisher_samples=samples,
                                                    batch_size=batch_size), lambda *a: None)
    features, _ = run._feature_pass(False)
    head = run._train_head(features)
    estimate = run._montecarlo_fisher(head, RESIDUALS[method])[0] - run._prior_term()
    exact = exact_fisher(run.probe, head, task.images)
    relative_error = np.linalg.norm(estimate - exact) / np.linalg.norm(exact)
    assert relative_error < 0.05, relative_error
    # a wrong scaling (e.g. forgetting the batch size) would be off by a factor, not 5%
    assert estimate.sum() / exact.sum() == pytest.approx(1.0, abs=0.05)


def test_rademacher_residual_has_the_fisher_second_moment():
    """E[r r^T] = diag(p) - p p^T, the covariance of the sampled label's score (hand formula)."""
    p = torch.tensor([[0.7, 0.2, 0.1], [0.98, 0.01, 0.01]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    r = torch.stack([rademacher_residual(p, g) for _ in range(40_000)])  # [draws, 2, 3]
    second = torch.einsum("nbi,nbj->bij", r, r) / len(r)
    exact = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    assert torch.allclose(second, exact, atol=4e-3), (second - exact).abs().max()
    assert r.sum(-1).abs().max() < 1e-12  # like p - e_y: sums to 0


def test_rademacher_is_far_less_noisy_than_sampled_labels_on_a_confident_head(digits, lite0):
    """Same head, samples and batches; only the estimator's draws differ from seed to seed: the
    seed-to-seed spread of the per-filter estimate. The head is the most confident regime, one
    head scored on the images it was fitted on."""
    images, labels = digits
    task = task_from_arrays(images[:60], labels[:60] % 2, input_size=SIDE)
    run = _Embedder(task, lite0, EmbedConfig(input_size=SIDE, fisher_samples=240, batch_size=8,
                                             head_folds=0, head_l2=1e-3), lambda *a: None)
    head = run._train_head(run._feature_pass(False)[0])
    # most sampled labels are the predicted one
    p = head(run.probe.backbone(run.probe.normalize(task.images)), torch.arange(task.size))
    assert p.softmax(-1).max(-1).values.mean() > 0.9
    spread = {}
    for method in ("montecarlo", "rademacher"):
        runs = []
        for seed in range(4):
            run.generator = torch.Generator().manual_seed(seed)
            runs.append(run._montecarlo_fisher(head, RESIDUALS[method])[0] - run._prior_term())
        runs = np.stack(runs)
        used = runs.mean(0) > 0  # at 32 px some filters of lite0 have an exactly zero Fisher
        spread[method] = float((runs.std(0)[used] / runs.mean(0)[used]).mean())
    print(spread)  # measured: montecarlo 0.86, rademacher 0.16
    assert spread["rademacher"] * 3 < spread["montecarlo"], spread


def test_cross_fitted_heads_score_each_image_without_having_seen_it(digits, lite0):
    """With random labels, one head fitted on all images predicts each image's own label (it has
    memorised it); the cross-fitted heads (the default), each scoring only images it was not
    fitted on, are not above chance (0.2). Their folds are class-stratified."""
    images, _ = digits
    rng = np.random.default_rng(0)
    task = task_from_arrays(images[:150], rng.integers(0, 5, 150), input_size=SIDE)
    own = {}
    for folds in (0, EmbedConfig.head_folds):
        run = _Embedder(task, lite0, EmbedConfig(input_size=SIDE, head_folds=folds),
                        lambda *a: None)
        features = run._feature_pass(False)[0]
        head = run._train_head(features)
        p = head(features, torch.arange(task.size)).softmax(-1)
        own[folds] = float(p[torch.arange(task.size), task.labels].mean())
    print(own)
    for c in range(task.num_classes):
        per_fold = torch.bincount(head.fold[task.labels == c], minlength=EmbedConfig.head_folds)
        assert per_fold.max() - per_fold.min() <= 1
    # measured 0.60 and 0.18 (a held-out image is a little below chance: its class's other
    # images, which the head saw, are not it)
    assert own[EmbedConfig.head_folds] < 0.22, own
    assert own[0] > own[EmbedConfig.head_folds] + 0.2, own


def test_same_seed_reproduces_and_probe_is_not_modified(digits_task, lite0):
    before = {k: v.clone() for k, v in lite0.state_dict().items()}
    flags = [p.requires_grad for p in lite0.parameters()]
    a = embed(digits_task, lite0, input_size=SIDE, seed=3)
    b = embed(digits_task, lite0, input_size=SIDE, seed=3)
    np.testing.assert_array_equal(a.values, b.values)
    assert all(torch.equal(before[k], v) for k, v in lite0.state_dict().items())
    assert [p.requires_grad for p in lite0.parameters()] == flags and not lite0.training
    assert a.values.shape == (lite0.num_filters,) and a.values.dtype == np.float32
    assert a.meta["seed"] == 3 and a.meta["input_size"] == SIDE and a.probe == "efficientnet_lite0"
    assert a.meta["fisher_samples"] >= 300 and set(a.meta["versions"]) >= {"torch", "precompute"}


def test_embedding_properties_on_real_tasks(digits, fashion, digits_task, lite0):
    """Permutation invariance, repeatability vs. different tasks, norm vs. label noise."""
    images, labels = digits
    images, labels = images[:300], labels[:300]
    same = embed(digits_task, lite0, input_size=SIDE, seed=0)
    again = embed(digits_task, lite0, input_size=SIDE, seed=1)
    permuted = embed(task_from_arrays(images, (labels * 3 + 1) % 10, input_size=SIDE), lite0,
                     input_size=SIDE, seed=0)
    parity = embed(task_from_arrays(images, labels % 2, input_size=SIDE), lite0,
                   input_size=SIDE, seed=0)
    rng = np.random.default_rng(0)
    shuffled = embed(task_from_arrays(images, rng.permutation(labels), input_size=SIDE), lite0,
                     input_size=SIDE, seed=0)
    noise_floor = distances.symmetric(same, again)
    # a relabelled task is the same task: as close as a re-run with another seed
    assert distances.symmetric(same, permuted) < 1.3 * noise_floor
    # another task on the same images is farther; a task on another domain much farther
    assert distances.symmetric(same, parity) > 1.2 * noise_floor
    assert distances.symmetric(same, shuffled) > 1.5 * noise_floor
    clothes = embed(task_from_arrays(*fashion, input_size=SIDE), lite0, input_size=SIDE, seed=0)
    assert distances.symmetric(same, clothes) > 2.5 * noise_floor

    norms = []
    for noise in (0.0, 0.3, 0.6, 0.9):
        noisy = labels.copy()
        flip = rng.random(len(noisy)) < noise
        noisy[flip] = rng.integers(0, 10, flip.sum())
        norms.append(embed(task_from_arrays(images, noisy, input_size=SIDE), lite0,
                           input_size=SIDE, seed=0).norm)
    assert norms == sorted(norms), norms  # harder task, larger embedding (paper Fig. 2 right)


def test_diversity_is_the_mean_distance_between_disjoint_batch_embeddings(digits_task,
                                                                         monkeypatch):
    """The coefficient's batch embeddings are the Fisher pass's first epoch cut into
    consecutive batches of DIVERSITY_BATCH images: with a pass of exactly one epoch they average
    to the embedding itself, and the coefficient is their mean pairwise d_sym (by the formula,
    pair by pair). A task without two disjoint batches gets none, and says why."""
    from precompute import task2vec

    seen = []
    original = task2vec._diversity
    monkeypatch.setattr(task2vec, "_diversity", lambda b, n: seen.append(b) or original(b, n))
    task = TaskData("digits", digits_task.images[:288], digits_task.labels[:288],
                    digits_task.classes, "<memory>")
    e = embed(task, tiny_probe(), method="rademacher", input_size=SIDE, seed=0, batch_size=8,
              fisher_samples=288)
    [batches] = seen
    assert batches.shape == (9, e.values.size)  # 36 steps of 8 images, 4 steps a batch
    np.testing.assert_allclose(batches.mean(0), e.values, rtol=1e-4)
    pairs = [distances.symmetric(batches[i], batches[j]) for i in range(9) for j in range(i)]
    assert e.meta["diversity"] == {"value": pytest.approx(np.mean(pairs), abs=1e-6),
                                   "batch": 32, "batches": 9, "distance": "d_sym"}
    assert 0 < e.meta["diversity"]["value"] < 1
    # two passes over 300 images: only the first epoch's 9 batches count (no image twice)
    seen.clear()
    e = embed(digits_task, tiny_probe(), method="rademacher", input_size=SIDE, seed=0,
              batch_size=8, fisher_samples=600)
    assert len(seen[0]) == 9 and e.meta["diversity"]["batches"] == 9
    small = TaskData("small", digits_task.images[:63], digits_task.labels[:63],
                     digits_task.classes, "<memory>")
    e = embed(small, tiny_probe(), method="rademacher", input_size=SIDE, seed=0)
    assert e.meta["diversity"] == {"value": None, "batch": 32, "batches": 0, "reason":
                                   "fewer than 64 images: no two disjoint batches of 32"}


def test_diversity_orders_two_classes_below_ten_of_the_same_pool(lite0):
    """A controlled family (benchmarks/bench_diversity.py has it over five seeds, with fonts):
    512 Fashion-MNIST images of two classes are less diverse than 512 of all ten."""
    from conftest import fashion_test_images

    x, y = fashion_test_images(4000)
    rng = np.random.default_rng(0)
    div = {}
    for classes in ([0, 1], list(range(10))):
        idx = rng.choice(np.flatnonzero(np.isin(y, classes)), 512, replace=False)
        e = embed(task_from_arrays(x[idx], y[idx], input_size=SIDE), lite0, input_size=SIDE, seed=0)
        div[len(classes)] = e.meta["diversity"]["value"]
    assert div[2] < div[10] - 0.01, div


@pytest.mark.parametrize("method", ["montecarlo", "variational"])
def test_constant_label_task_gives_the_trivial_embedding(digits_task, method):
    task = constant_task(digits_task)
    e = embed(task, tiny_probe(), method=method, input_size=SIDE, variational_steps=150)
    np.testing.assert_allclose(e.values, e.trivial, rtol=0.01)
    # the trivial embedding is the prior (beta / N0) / lambda^2, the same for every task size
    cfg = EmbedConfig()
    assert e.trivial[0] == pytest.approx(cfg.beta / cfg.prior_samples / cfg.prior_variance)


def test_variational_agrees_with_montecarlo_on_which_filters_matter(digits_task):
    from scipy.stats import spearmanr

    probe = tiny_probe()
    result = embed_methods(digits_task, probe, methods=("montecarlo", "variational"),
                           input_size=SIDE, variational_steps=300)
    mc, var = result["montecarlo"].values, result["variational"].values
    assert spearmanr(mc, var).statistic > 0.5
    # data adds information to the prior on most filters
    assert (var > 1.05 * result["variational"].trivial).mean() >= 0.75


def test_domain_embedding_is_mean_activation(digits_task):
    probe = tiny_probe()
    e = embed(digits_task, probe, method="domain", input_size=SIDE)
    assert e.trivial is None and e.values.shape == (probe.num_filters,)
    with torch.no_grad():
        first = probe.backbone[0](probe.normalize(digits_task.images))
    np.testing.assert_allclose(e.values[:4], first.mean(dim=(0, 2, 3)).numpy(), rtol=1e-4)


def test_save_and_load_round_trip(tmp_path, digits_task):
    e = embed(digits_task, tiny_probe(), input_size=SIDE)
    path = e.save(tmp_path / "e.npz")
    back = TaskEmbedding.load(path)
    np.testing.assert_array_equal(back.values, e.values)
    np.testing.assert_array_equal(back.trivial, e.trivial)
    assert back.layers == e.layers and back.meta == e.meta and back.method == "rademacher"
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"]  # no temporary left behind
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(Task2VecError, match="not a task embedding"):
        TaskEmbedding.load(tmp_path / "bad.npz")


def test_bad_arguments(digits_task):
    with pytest.raises(Task2VecError, match="unknown method"):
        embed(digits_task, tiny_probe(), method="fim", input_size=SIDE)
    with pytest.raises(Task2VecError, match="input_size"):
        embed(digits_task, tiny_probe(), input_size=64)
    if not torch.cuda.is_available():
        with pytest.raises(Task2VecError, match="no CUDA"):
            embed(digits_task, tiny_probe(), input_size=SIDE, device="cuda")


def test_each_fisher_method_draws_from_its_own_seeded_stream(digits_task):
    """variational gives the same values whether or not another method ran before it."""
    probe = tiny_probe()
    alone = embed(digits_task, probe, method="variational", input_size=SIDE, variational_steps=20)
    after = embed_methods(digits_task, probe, methods=("rademacher", "variational"),
                          input_size=SIDE, variational_steps=20)["variational"]
    np.testing.assert_array_equal(alone.values, after.values)
