"""The precompute pipeline: DuckDB contents, resume after a crash, atomic publish.

The reference library is embedded for real; the tests of resuming, growing and publishing
reuse its embeddings (conftest.remembered_embed_methods): what they test is the build around
the embedding, and every number they compare still comes from a real embedding.
"""
import json

import duckdb
import numpy as np
import pytest

from precompute import build, store
from precompute.errors import Task2VecError
from precompute.libraries import Record, TaskSpec

from conftest import remembered_embed_methods

SIDE = 32


def digit_specs(digits, n_tasks: int = 6) -> list[TaskSpec]:
    """Small real tasks: pairs of digit classes, 40 images each split 30/10."""
    images, labels = digits
    pairs = [(0, 1), (3, 8), (1, 7), (4, 9), (2, 5), (6, 0), (5, 6), (7, 9)][:n_tasks]
    specs = []
    for a, b in pairs:
        idx = np.flatnonzero((labels == a) | (labels == b))[:40]
        records = [Record(images[i], str(labels[i]), "train" if k < 30 else "test")
                   for k, i in enumerate(idx)]
        specs.append(TaskSpec(task_id=f"digits/{a}-vs-{b}", family="digits", name=f"{a} vs {b}",
                              taxonomy=("digits", "pair", f"{a}-vs-{b}"),
                              records=lambda r=records: r))
    return specs


def read_all(db) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            "tasks": con.execute("SELECT * FROM tasks ORDER BY task_id").fetchall(),
            "embeddings": con.execute(
                "SELECT task_id, method, value, trivial_level FROM embeddings ORDER BY ALL").fetchall(),
            "maps": con.execute("SELECT * FROM maps ORDER BY ALL").fetchall(),
            "thumbnails": con.execute("SELECT count(*) FROM thumbnails").fetchone()[0],
            "info": store.get_info(con),
            "runs": con.execute("SELECT tasks_embedded FROM runs ORDER BY run_id").fetchall(),
            "neighbours": con.execute("SELECT * FROM neighbours ORDER BY task_id, rank").fetchall(),
        }
    finally:
        con.close()


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    db = tmp_path_factory.mktemp("ref") / "lib.duckdb"
    with pytest.MonkeyPatch.context() as m:  # embedded for real, and remembered
        m.setattr(build, "embed_methods", remembered_embed_methods)
        build.build_library(digit_specs(digits), db, library="digits", input_size=SIDE,
                            maps=("tsne",), progress=False)
    return read_all(db)


def test_build_writes_every_table(digits, reference):
    assert [t[0] for t in reference["tasks"]] == sorted(s.task_id for s in digit_specs(digits))
    task = reference["tasks"][0]
    assert task[3] == ["digits", "pair", task[0].split("/")[1]]  # taxonomy path
    assert task[6] == 30 and task[7] == 10  # num_train, num_test
    methods = {(t, m) for t, m, *_ in reference["embeddings"]}
    assert len(methods) == 12 and {m for _, m in methods} == {"rademacher", "domain"}
    value = store.decode(np.asarray(reference["embeddings"][1][2]))
    assert value.shape == (42016,) and np.all(value > 0)
    assert reference["embeddings"][1][3] == pytest.approx(1e-2 / 1000)  # (beta / N0) / lambda^2
    assert len(reference["maps"]) == 12  # 6 tasks x (task, domain) t-SNE
    assert reference["thumbnails"] == 6 * build.THUMBNAILS_PER_TASK
    assert reference["info"]["probe"] == "efficientnet_lite0" and reference["info"]["input_size"] == SIDE
    assert reference["runs"] == [(6,)]


def test_build_stores_each_tasks_nearest_tasks_by_symmetric_distance(reference):
    """The task cards read these lists: every other task, nearest first, with d_sym computed
    here pair by pair from the stored embeddings (paper section 3.3)."""
    from precompute import distances

    fisher = {t: store.decode(np.asarray(v)) for t, m, v, _ in reference["embeddings"] if m == "rademacher"}
    stored = {}
    for task, rank, other, dist in reference["neighbours"]:
        stored.setdefault(task, []).append((rank, other, dist))
    assert sorted(stored) == sorted(fisher)
    for task, rows in stored.items():
        expected = sorted((distances.symmetric(fisher[task], fisher[o]), o) for o in fisher if o != task)
        assert [r for r, _, _ in rows] == list(range(5))  # 6 tasks: the 5 others
        assert [o for _, o, _ in rows] == [o for _, o in expected]
        assert [d for _, _, d in rows] == pytest.approx([d for d, _ in expected], abs=1e-6)


def test_bfloat16_storage_round_trip():
    values = np.array([1.0, -2.5, 3.14159, 1e-30, 6.5e4, 1 + 2**-8, 1 + 3 * 2**-8], np.float32)
    back = store.decode(store.encode(values))
    np.testing.assert_allclose(back, values, rtol=2**-8)
    assert back[0] == 1.0 and back[1] == -2.5
    assert back[5] == 1.0 and back[6] == 1 + 4 * 2**-8  # ties round to even mantissa


def test_killed_build_resumes_to_the_same_result(digits, tmp_path, monkeypatch, reference,
                                                remembered_embeddings):
    db = tmp_path / "lib.duckdb"
    real = build.embed_methods
    calls = {"n": 0}

    def crash_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the process dies in the middle of the fourth task
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "embed_methods", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        build.build_library(digit_specs(digits), db, library="digits", input_size=SIDE,
                            maps=("tsne",), progress=False)
    assert not db.exists()  # nothing published
    monkeypatch.setattr(build, "embed_methods", real)
    build.build_library(digit_specs(digits), db, library="digits", input_size=SIDE,
                        maps=("tsne",), progress=False)
    resumed = read_all(db)
    assert resumed["runs"] == [(3,)]  # only the remaining tasks were embedded
    assert resumed["tasks"] == reference["tasks"]
    for a, b in zip(resumed["embeddings"], reference["embeddings"]):
        assert a[:2] == b[:2] and np.array_equal(a[2], b[2])
    assert resumed["maps"] == reference["maps"]
    assert not (tmp_path / "lib.duckdb.building").exists()


def test_a_library_that_grew_embeds_only_its_new_tasks_and_keeps_the_rest(
        digits, tmp_path, reference, remembered_embeddings):
    db = tmp_path / "lib.duckdb"
    build.build_library(digit_specs(digits, n_tasks=4), db, library="digits", input_size=SIDE,
                        maps=("tsne",), progress=False)
    con = store.open_library(db)  # the expert stages' tables, with rows to keep
    con.execute("INSERT INTO experts VALUES ('imagenet', 'ImageNet', 'imagenet', [], '{}')")
    con.execute("INSERT INTO selection_results VALUES ('chance', 0.5, 0, 0, 0, 0, '{}')")
    store.set_info(con, optimal_error=0.1, norm_error_spearman=0.3)
    con.close()
    build.build_library(digit_specs(digits), db, library="digits", input_size=SIDE,
                        maps=("tsne",), progress=False)
    grown = read_all(db)
    assert grown["runs"] == [(4,), (2,)]
    assert grown["tasks"] == reference["tasks"]
    for a, b in zip(grown["embeddings"], reference["embeddings"]):
        assert a[:2] == b[:2] and np.array_equal(a[2], b[2])
    assert {m[2] for m in grown["maps"]} == {t[0] for t in reference["tasks"]}
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT expert_id FROM experts").fetchall() == [("imagenet",)]
    # the stored model-selection evaluation no longer covers every task: dropped
    assert con.execute("SELECT count(*) FROM selection_results").fetchone() == (0,)
    info = store.get_info(con)
    assert "optimal_error" not in info and "norm_error_spearman" not in info
    assert info["input_size"] == SIDE
    con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.duckdb"]
    # other settings: a fresh build replaces the file
    build.build_library(digit_specs(digits, n_tasks=1), db, library="digits", input_size=48,
                        maps=(), progress=False)
    fresh = read_all(db)
    assert fresh["runs"] == [(1,)] and len(fresh["tasks"]) == 1


def test_build_fills_the_diversity_of_tasks_embedded_before_it(digits, tmp_path, reference,
                                                               remembered_embeddings):
    """A library whose tasks lack the diversity coefficient (built before it) gets it from the
    next build: those tasks' Fisher embeddings are computed again with the same seed, only the
    metadata gains the coefficient, and the recomputed embeddings equal the stored ones."""
    db = tmp_path / "lib.duckdb"
    specs = digit_specs(digits)
    build.build_library(specs, db, library="digits", input_size=SIDE, maps=("tsne",), progress=False)
    con = duckdb.connect(str(db))
    before = dict(con.execute("SELECT task_id, meta->'diversity' FROM embeddings "
                              "WHERE method = 'rademacher'").fetchall())
    # 30 training images: fewer than two disjoint batches, so a coefficient that says why
    assert all(json.loads(d)["reason"].startswith("fewer than 64 images") for d in before.values())
    old = ["digits/0-vs-1", "digits/4-vs-9"]
    con.execute("UPDATE embeddings SET meta = json_merge_patch(meta, '{\"diversity\": null}') "
                "WHERE method = 'rademacher' AND task_id IN (?, ?)", old)
    assert store.without_diversity(con, "rademacher") == set(old)
    con.close()
    build.build_library(specs, db, library="digits", input_size=SIDE, maps=("tsne",), progress=False)
    after = read_all(db)
    assert after["embeddings"] == reference["embeddings"] and after["tasks"] == reference["tasks"]
    con = duckdb.connect(str(db), read_only=True)
    filled = dict(con.execute("SELECT task_id, meta->'diversity' FROM embeddings "
                              "WHERE method = 'rademacher'").fetchall())
    summary = json.loads(con.execute("SELECT summary FROM runs ORDER BY run_id DESC").fetchone()[0])
    con.close()
    assert {t: json.loads(v) for t, v in filled.items()} == {t: json.loads(v) for t, v in before.items()}
    assert summary["tasks_embedded_this_run"] == 0
    assert summary["diversity_filled"] == 2 and summary["diversity_reproduced_bits"] == 2


def test_resume_with_other_settings_is_refused(digits, tmp_path, monkeypatch):
    db = tmp_path / "lib.duckdb"
    monkeypatch.setattr(build, "embed_methods", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        build.build_library(digit_specs(digits), db, library="digits", input_size=SIDE,
                            progress=False)
    with pytest.raises(Task2VecError, match="input_size"):
        build.build_library(digit_specs(digits), db, library="digits", input_size=48,
                            progress=False)


def test_stages_update_a_copy_and_publish_it_atomically(digits, tmp_path, remembered_embeddings):
    db = tmp_path / "lib.duckdb"
    build.build_library(digit_specs(digits, n_tasks=2), db, library="digits", input_size=SIDE,
                        maps=(), progress=False)
    assert not list(tmp_path.glob("*.building*"))  # published, work file gone
    with store.updating(db) as con:
        con.execute("CREATE TABLE note AS SELECT 1 AS x")
        # the app keeps reading the published file while a stage writes
        reader = duckdb.connect(str(db), read_only=True)
        assert reader.execute("SELECT count(*) FROM tasks").fetchone() == (2,)
        reader.close()
    with pytest.raises(KeyboardInterrupt):  # killed half-way: the published file is unchanged
        with store.updating(db) as con:
            con.execute("INSERT INTO note VALUES (2)")
            raise KeyboardInterrupt
    check = duckdb.connect(str(db), read_only=True)
    assert check.execute("SELECT x FROM note").fetchall() == [(1,)]
    check.close()
    with store.updating(db) as con:  # the next run resumes from the unfinished copy
        assert con.execute("SELECT x FROM note ORDER BY x").fetchall() == [(1,), (2,)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.duckdb"]
    with pytest.raises(Task2VecError, match="no such library file"):
        with store.updating(tmp_path / "missing.duckdb"):
            pass
