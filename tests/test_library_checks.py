"""The embedding means something (paper section 4.1), checked on a small demo library built here.

The library is a slice of the offline demo library built by the real pipeline: 12 writing
systems from four branches of the script genealogy, Fashion-MNIST attribute tasks of two
attribute groups (footwear, garment shape), and the footwear and other-item tasks of the
whole-pool branch (every task's images drawn evenly from all ten classes): 36 tasks.
docs/RESULTS.md has the same checks on the full library.
"""
import duckdb
import numpy as np
import pytest

from precompute import analysis, build, engine, store
from precompute.libraries.demo import read_demo_library

SCRIPTS = ("greek", "latin", "cyrillic", "coptic",  # Greek-derived
           "hebrew", "arabic", "syriac",  # Aramaic-derived
           "devanagari", "bengali", "gujarati",  # North Brahmic
           "thai", "lao")  # South-East Asian Brahmic
FASHION_GROUPS = ("footwear", "garment-shape")
WHOLE_POOL_GROUPS = ("all-images/footwear", "all-images/other")


@pytest.fixture(scope="module")
def slice_library(tmp_path_factory):
    specs = read_demo_library(seed=0, scale=0.3, families=("fashion_mnist", "glyphs", "digits"))
    picked = [s for s in specs
              if (s.family == "glyphs" and s.task_id.split("/")[1] in SCRIPTS)
              or (s.family == "fashion_mnist" and s.taxonomy[1] in FASHION_GROUPS)
              or s.meta.get("attribute_group") in WHOLE_POOL_GROUPS]
    db = tmp_path_factory.mktemp("checks") / "checks.duckdb"
    # on Ray's two single-threaded workers (a local instance for this build): on 2 cores they
    # embed these small tasks in about 0.6 of the time torch's two threads take in one process
    # (BENCHMARKS.md), with the same embeddings as a one-thread local build (test_engine)
    ex = engine.executor("ray", address="local", progress=False)
    try:
        build.build_library(picked, db, library="demo-slice", input_size=32, maps=(),
                            progress=False, executor=ex)
    finally:
        ex.close()
    return picked, db


@pytest.fixture(scope="module")
def checks(slice_library):
    result = analysis.report(slice_library[1])
    print(analysis.markdown(result))  # the numbers, for the test log
    return result


def test_glyph_distances_follow_the_script_genealogy(checks):
    t = checks["taxonomy"]["glyphs"]
    assert t["tasks"] == len(SCRIPTS)
    lo, hi = t["interval"]
    assert lo < t["spearman"] < hi
    # Over all 66 pairs the correlation is weak but positive (the cross-fitted head at 32 px:
    # 0.140, interval [-0.28, 0.59]; the in-sample head of before 0.302; the domain embedding
    # 0.324)
    assert t["spearman"] > 0.05
    c = t["curve"]
    # Fig. 2 centre: the nearest tasks are taxonomically closer than a random task (measured
    # 4.39 against 6.30 for k <= 3, the in-sample head 4.03; random embeddings give chance), and
    # no closer than the taxonomy itself allows
    assert c["embedding"][:3].mean() < c["chance"][0] - 1.5
    assert np.all(c["embedding"] >= c["taxonomy"] - 1e-9)


def test_fashion_tasks_find_their_related_tasks(checks):
    s = checks["shared_domain"]
    assert s["tasks"] == 10 + 14
    # nearest tasks are related tasks above the base rate (measured 0.675 against 0.30, the
    # in-sample head 0.625; the domain embedding gets 0.43: most of these tasks draw their images from the classes they
    # are about, which gives relatedness away, docs/RESULTS.md)
    assert s["task2vec"] > 1.8 * s["chance"]


def test_on_one_image_pool_task2vec_finds_related_tasks_and_the_domain_embedding_cannot(checks):
    """The paper's Fig. 1 claim: tasks on the same images differ only in their labels, which the
    domain embedding does not see."""
    s = checks["one_pool"]
    assert s["tasks"] == 14 and s["chance"] == pytest.approx(6 / 13)
    # measured: TASK2VEC 0.81 (the in-sample head 0.80, sampled labels 0.71), domain 0.37
    # (chance 0.46)
    assert s["task2vec"] > s["chance"] + 0.25
    assert s["task2vec"] > s["domain"] + 0.3


def test_a_task_embedded_again_with_another_seed_keeps_its_nearest_library_tasks(slice_library):
    """What an upload's user sees: a task embedded anew (another seed) lands among the same
    5 nearest tasks of the library (issue target: 4.5 of 5 on average)."""
    from precompute import distances, embed_methods
    from precompute.libraries import task_data
    from precompute.probes import create

    specs, db = slice_library
    view = analysis.LibraryView.load(db)
    con = duckdb.connect(str(db), read_only=True)
    _, fisher = store.embedding_matrix(con, "rademacher")
    con.close()
    probe = create("efficientnet_lite0")
    by_id = {s.task_id: s for s in specs}
    kept = []
    for i in np.linspace(0, len(view.ids) - 1, 6).round().astype(int):
        spec = by_id[view.ids[i]]
        train = task_data(spec.task_id, list(spec.records()), "train", 32)
        again = embed_methods(train, probe, methods=("rademacher",), input_size=32,
                              seed=build.task_seed(1, spec.task_id))["rademacher"]
        before = view.task_distance[i].copy()
        before[i] = np.inf
        after = distances.symmetric_matrix(fisher, again.values[None])[:, 0]
        after[i] = np.inf  # the library's copy of the task itself is not a neighbour
        kept.append(len(set(np.argsort(before)[:5]) & set(np.argsort(after)[:5])))
    print("kept of 5:", kept)
    assert np.mean(kept) >= 4.5, kept
