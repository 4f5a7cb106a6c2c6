"""A user's own models as experts (precompute.user_models, add-expert / remove-expert).

Real torchvision networks with seeded random weights (saved as state dicts by the test), and one
of the library's own fine-tuned experts saved as a whole probe, are added to a copy of the
shared small library (conftest.expert_library); the matrix fills their columns for real.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from explorer.upload import expert_table
from precompute import experts, selection, store, transfer, user_models
from precompute.__main__ import main
from precompute.distances import symmetric_matrix
from precompute.probes import create
from precompute.task2vec import TaskEmbedding

DIGITS_TASK = "digits-0-vs-1"


def seeded_state(arch: str, seed: int, **kwargs) -> dict:
    """A torchvision network's state dict with seeded random weights (the global generator
    is restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.get_model(arch, weights=None, **kwargs).state_dict()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    out = {"resnet18": folder / "resnet18.pt", "mobilenet": folder / "mobilenet.pt"}
    torch.save(seeded_state("resnet18", 0, num_classes=10), out["resnet18"])
    torch.save(seeded_state("mobilenet_v3_small", 1, num_classes=5), out["mobilenet"])
    return out


@pytest.fixture
def lib(expert_library, tmp_path) -> dict:
    """A copy of the shared library and of its cache, to change."""
    db = tmp_path / "lib.duckdb"
    shutil.copy(expert_library["db"], db)
    cache = tmp_path / "cache"
    shutil.copytree(expert_library["root"] / "cache", cache)
    return {**expert_library, "db": db, "cache": cache}


def fisher(con, task_id: str) -> TaskEmbedding:
    info = store.get_info(con)
    value = store.decode(np.asarray(con.execute(
        "SELECT value FROM embeddings WHERE task_id = ? AND method = ?",
        [task_id, store.task_method(info)]).fetchone()[0]))
    return TaskEmbedding(value, store.task_method(info), info["probe"], [],
                         {"input_size": info["input_size"]})


def test_torchvision_models_are_added_and_ranked_as_the_selectors_can(lib, weights, tmp_path, capsys):
    db, cache = lib["db"], lib["cache"]
    manifest = tmp_path / "models.csv"
    manifest.write_text("name,arch,weights,trained_on\n"
                        f"res,resnet18,{weights['resnet18']},{DIGITS_TASK}\n"
                        f"mob,mobilenet_v3_small,{weights['mobilenet'].name},\n")
    shutil.copy(weights["mobilenet"], tmp_path / weights["mobilenet"].name)  # relative path
    assert main(["add-expert", "--db", str(db), "--manifest", str(manifest),
                 "--cache", str(cache), "--quiet"]) == 0
    assert "added user/res" in capsys.readouterr().out
    before = digest(db)  # a name taken: refused, nothing changed
    assert main(["add-expert", "--db", str(db), "--name", "res", "--arch", "resnet18",
                 "--weights", str(weights["resnet18"]), "--cache", str(cache)]) == 2
    assert "already has an expert user/res" in capsys.readouterr().err
    assert digest(db) == before
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = {r[0]: (r[1], r[2], json.loads(r[3])) for r in con.execute(
            "SELECT expert_id, kind, source_tasks, meta FROM experts WHERE kind = 'user'").fetchall()}
        assert set(rows) == {"user/res", "user/mob"}
        kind, sources, meta = rows["user/res"]
        assert sources == [DIGITS_TASK] and meta["task_known"] is True
        assert (meta["arch"], meta["num_classes"], meta["feature_dim"], meta["head"]) == \
            ("resnet18", 10, 512, "fc")
        assert rows["user/mob"][2]["feature_dim"] == 1024  # the input of classifier.3
        assert rows["user/mob"][1] == [] and rows["user/mob"][2]["task_known"] is False
        # the expert's embedding is its training task's; unknown: the trivial embedding
        emb = dict((r[0], store.decode(np.asarray(r[1]))) for r in con.execute(
            "SELECT expert_id, value FROM expert_embeddings").fetchall())
        np.testing.assert_array_equal(emb["user/res"], fisher(con, DIGITS_TASK).values)
        trivial = con.execute("SELECT any_value(trivial_level) FROM embeddings").fetchone()[0]
        np.testing.assert_allclose(emb["user/mob"], trivial, rtol=4e-3)
        # the weights were copied into the cache, content-addressed
        assert user_models.weights_path(cache, meta).read_bytes() == weights["resnet18"].read_bytes()
        assert store.get_info(con)["selection_stale"] == ["added user/res, user/mob"]

        task = fisher(con, "fashion-0-vs-1")
        t2v = selection.rank_experts(con, task, "task2vec").set_index("expert_id")
        # ranked by the distance of its training task to this one, as every known-task expert
        d = symmetric_matrix(emb["user/res"][None], task.values[None])[0, 0]
        assert t2v.loc["user/res", "score"] == pytest.approx(-d, rel=1e-6)
        assert t2v.loc["user/res", "kind"] == "user" and t2v.loc["user/res", "rank"] >= 1
        assert t2v.loc["user/mob", "rank"] is pd.NA and np.isnan(t2v.loc["user/mob", "score"])
        assert "training task is unknown" in t2v.loc["user/mob", "note"]
        assert t2v["rank"].iloc[-1] is pd.NA  # the ones it cannot rank come last
        # the upload page lists the user's models wherever they rank, marked as theirs
        shown = expert_table(t2v.reset_index(), top=2)
        assert shown["expert_id"].tolist() == [e for e in t2v.index
                                               if e in set(t2v.index[:2]) | set(rows)]
        yours = shown[shown["expert_id"].str.startswith("user/")]
        assert set(yours["yours"]) == {"your model"} and len(yours) == 2
        assert (shown["yours"] == "").sum() == len(shown) - 2
        assert "–" in yours.index and "training task is unknown" in " ".join(shown["note"])
        m2v = selection.rank_experts(con, task, "model2vec").set_index("expert_id")
        assert all("run python -m precompute evaluate" in m2v.loc[e, "note"] for e in rows)
        assert m2v.drop(index=list(rows))["rank"].notna().all()
        prior = selection.rank_experts(con, task, "static_prior").set_index("expert_id")
        assert "performance matrix" in prior.loc["user/res", "note"]  # no column yet
    finally:
        con.close()

    assert main(["matrix", str(lib["manifest"]), "--db", str(db), "--cache", str(cache),
                 "--quiet"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        perf = con.execute("SELECT p.expert_id, p.task_id, p.test_error, f.logme, f.leep, f.nce "
                           "FROM performance p JOIN feature_scores f USING (expert_id, task_id) "
                           "WHERE p.expert_id LIKE 'user/%'").fetchall()
        assert len(perf) == 2 * len(lib["specs"])
        assert all(0 <= r[2] <= 1 and np.isfinite(r[3]) and r[4] is not None and r[5] is not None
                   for r in perf)
        # the column holds the model's own features: recomputed here, the same test error
        info = store.get_info(con)
        spec = next(s for s in lib["specs"] if s.task_id == "fashion-7-vs-9")
        model = user_models.load_model("resnet18", weights["resnet18"])
        splits = experts.capped_splits(spec, int(info["seed"]), experts.MAX_TRAIN,
                                       experts.MAX_TEST, int(info["input_size"]))
        x = {s: model.features(imgs) for s, (imgs, _, _) in splits.items()}
        _, test_err = transfer.linear_probe(x["train"], splits["train"][1], x["test"],
                                            splits["test"][1], splits["train"][2])
        stored = next(r[2] for r in perf if r[:2] == ("user/res", "fashion-7-vs-9"))
        assert test_err == pytest.approx(stored, abs=1e-12)
        # the static prior ranks them at once, from the complete matrix
        prior = selection.rank_experts(con, fisher(con, "fashion-0-vs-1"), "static_prior")
        assert prior["rank"].notna().all() and {"user/res", "user/mob"} <= set(prior.expert_id)
    finally:
        con.close()

    # experts again: the plan's experts are kept, and so are the user's
    assert main(["experts", str(lib["manifest"]), "--db", str(db), "--cache", str(cache),
                 "--experts", "2", "--sources", "2", "--steps", "40", "--quiet"]) == 0
    assert main(["evaluate", "--db", str(db), "--seeds", "1", "--folds", "2", "--quiet"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        ids = {r[0] for r in con.execute("SELECT expert_id FROM experts").fetchall()}
        assert {"user/res", "user/mob"} <= ids
        assert "selection_stale" not in store.get_info(con)
        m2v = selection.rank_experts(con, fisher(con, "fashion-0-vs-1"), "model2vec")
        assert m2v["rank"].notna().all()  # placed from its learned bias now
        candidates = con.execute("SELECT ranking FROM selector_rankings WHERE selector = "
                                 "'logme' AND task_id = ?", [DIGITS_TASK]).fetchone()[0]
        assert "user/mob" in candidates and "user/res" not in candidates  # trained on it
    finally:
        con.close()

    assert main(["remove-expert", "--db", str(db), "--name", "res", "--name", "user/mob"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        for table in ("experts", "expert_embeddings", "performance", "feature_scores", "model2vec"):
            assert con.execute(f"SELECT count(*) FROM {table} WHERE expert_id LIKE 'user/%'"
                               ).fetchone()[0] == 0, table
        assert store.get_info(con)["selection_stale"] == ["removed user/res, user/mob"]
    finally:
        con.close()


def test_a_fine_tuned_expert_saved_as_a_whole_probe_gives_its_own_column(lib, capsys):
    """The library's digits expert (its tail in the probe) added back as a user model: the
    same network, so the same test errors (the expert's path caches float16 trunk activations;
    a borderline image may flip)."""
    db, cache = lib["db"], lib["cache"]
    con = duckdb.connect(str(db), read_only=True)
    try:
        expert_id, meta, sources = next(
            (r[0], json.loads(r[1]), r[2]) for r in con.execute(
                "SELECT expert_id, meta, source_tasks FROM experts WHERE kind = 'finetuned' "
                "ORDER BY expert_id").fetchall())
        info = store.get_info(con)
    finally:
        con.close()
    probe = create(info["probe"])
    _, tail = probe.split(int(info["experts"]["tail_stages"]))
    tail.load_state_dict(torch.load(next(cache.rglob(meta["weights_file"])), weights_only=True))
    whole = cache.parent / "expert-as-probe.pt"
    torch.save(probe.state_dict(), whole)
    assert main(["add-expert", "--db", str(db), "--name", "mine", "--arch", info["probe"],
                 "--weights", str(whole), "--trained-on", sources[0], "--cache", str(cache),
                 "--quiet"]) == 0
    assert main(["matrix", str(lib["manifest"]), "--db", str(db), "--cache", str(cache),
                 "--quiet"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        err = {e: dict(con.execute("SELECT task_id, test_error FROM performance WHERE "
                                   "expert_id = ?", [e]).fetchall()) for e in (expert_id, "user/mine")}
        logme = {e: dict(con.execute("SELECT task_id, logme FROM feature_scores WHERE "
                                     "expert_id = ?", [e]).fetchall()) for e in (expert_id, "user/mine")}
        n_test = dict(con.execute("SELECT task_id, num_test FROM tasks").fetchall())
    finally:
        con.close()
    diff = np.array([abs(err[expert_id][t] - err["user/mine"][t]) * n_test[t] for t in n_test])
    assert diff.max() <= 1 and diff.sum() <= 2, diff  # test mistakes differing
    assert len(set(err[expert_id].values())) > 2  # the errors differ across tasks
    # LogME on the train split, a continuous function of the features: float16 rounding only
    a, b = (np.array([logme[e][t] for t in n_test]) for e in (expert_id, "user/mine"))
    np.testing.assert_allclose(b, a, rtol=2e-3)  # measured: 4e-4 at most
    assert np.ptp(a) > 0.1


@pytest.mark.parametrize("case", ["wrong arch", "truncated", "code", "unknown arch", "no file",
                                  "not a task", "bad name", "not a state dict"])
def test_bad_models_are_refused_in_one_line_and_change_nothing(lib, weights, tmp_path, capsys, case):
    db, cache = lib["db"], lib["cache"]
    marker = tmp_path / "pwned"
    args = {"--name": "m", "--arch": "resnet18", "--weights": str(weights["resnet18"])}
    if case == "wrong arch":
        args["--arch"], phrases = "resnet34", ["does not fit resnet34", "'layer1.2."]
    elif case == "truncated":
        bad = tmp_path / "cut.pt"
        bad.write_bytes(weights["resnet18"].read_bytes()[:100_000])
        args["--weights"], phrases = str(bad), ["truncated"]
    elif case == "code":
        bad = tmp_path / "evil.pt"
        torch.save({"conv1.weight": _Payload(marker)}, bad)
        args["--weights"], phrases = str(bad), ["refused", "never unpickles"]
    elif case == "unknown arch":
        args["--arch"], phrases = "resnet19", ["unknown architecture", "resnet18"]
    elif case == "no file":
        args["--weights"], phrases = str(tmp_path / "none.pt"), ["no such weights file"]
    elif case == "not a task":
        args["--trained-on"], phrases = "no-such-task", ["neither a task of this library"]
    elif case == "bad name":
        args["--name"], phrases = "../m", ["a name is 1 to 64 letters"]
    else:
        bad = tmp_path / "list.pt"
        torch.save([torch.zeros(3)], bad)
        args["--weights"], phrases = str(bad), ["is not a state dict"]
    before = digest(db)
    cached = sorted(p.name for p in cache.rglob("*"))
    code = main(["add-expert", "--db", str(db), "--cache", str(cache), "--quiet",
                 *[v for kv in args.items() for v in kv]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert all(p in err for p in phrases), err
    assert "Traceback" not in err
    assert not marker.exists()  # nothing in the file ran
    assert digest(db) == before and not db.with_name(db.name + ".updating").exists()
    assert sorted(p.name for p in cache.rglob("*")) == cached


class _Payload:
    """A pickle that would create ``marker`` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_remove_expert_refuses_the_library_s_own_experts(lib, capsys):
    before = digest(lib["db"])
    assert main(["remove-expert", "--db", str(lib["db"]), "--name", "imagenet"]) == 2
    assert "one of the library's own experts" in capsys.readouterr().err
    assert main(["remove-expert", "--db", str(lib["db"]), "--name", "nobody"]) == 2
    assert "no models added with add-expert" in capsys.readouterr().err
    assert digest(lib["db"]) == before


def test_manifest_errors_name_the_line(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("name,arch\nx,resnet18\n")
    with pytest.raises(user_models.Task2VecError, match="missing: weights"):
        user_models.read_manifest(m)
    m.write_text("name,arch,weights\nx,resnet18,\n")
    with pytest.raises(user_models.Task2VecError, match="line 2"):
        user_models.read_manifest(m)


def test_trained_on_a_task_folder_embeds_it_with_the_library_s_settings(lib, weights, digits, tmp_path):
    from PIL import Image

    from precompute.task2vec import embed_methods
    from precompute.tasks import load_task

    images, labels = digits
    folder = tmp_path / "my-task"
    for c in (2, 5):
        (folder / str(c)).mkdir(parents=True)
        for i in np.flatnonzero(labels == c)[:12]:
            Image.fromarray(np.asarray(images[i], np.uint8)).save(folder / str(c) / f"{i}.png")
    assert main(["add-expert", "--db", str(lib["db"]), "--name", "mob", "--arch",
                 "mobilenet_v3_small", "--weights", str(weights["mobilenet"]), "--trained-on",
                 str(folder), "--cache", str(lib["cache"]), "--quiet"]) == 0
    con = duckdb.connect(str(lib["db"]), read_only=True)
    try:
        info = store.get_info(con)
        sources, meta = con.execute("SELECT source_tasks, meta FROM experts WHERE expert_id = "
                                    "'user/mob'").fetchone()
        value = store.decode(np.asarray(con.execute(
            "SELECT value FROM expert_embeddings WHERE expert_id = 'user/mob'").fetchone()[0]))
    finally:
        con.close()
    meta = json.loads(meta)
    assert sources == [] and meta["task_known"] is True
    assert meta["trained_on"]["path"] == str(folder.resolve()) and meta["trained_on"]["images"] == 24
    method = store.task_method(info)
    task = load_task(folder, input_size=int(info["input_size"]))
    expected = embed_methods(task, info["probe"], methods=[method], seed=int(info["seed"]),
                             input_size=int(info["input_size"]))[method].values
    np.testing.assert_array_equal(value, store.decode(store.encode(expected)))
