"""The explorer's pages under streamlit.testing.v1.AppTest, on a real library file.

Every assertion is about what the page shows: task names and counts, distances, correlations,
the numbers of the Table 1 analog, and the messages shown when a library lacks a table.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import time
import json
import os
import shutil
import zipfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest

from conftest import (APP_DIGIT_PAIRS, APP_FASHION_PAIRS, APP_SELECTION, app_expert_errors,
                      expect_error)
from explorer import figures, state
from explorer import upload as up
from precompute import analysis, distances, store
from precompute.errors import Task2VecError

PAGES = {"map": "explorer/pages/task_map.py", "taxonomy": "explorer/pages/taxonomy.py",
         "difficulty": "explorer/pages/difficulty.py", "selection": "explorer/pages/model_selection.py",
         "upload": "explorer/pages/upload.py"}
N_TASKS = len(APP_DIGIT_PAIRS) + len(APP_FASHION_PAIRS)


def open_app(db, page: str = "map", **params) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=180)
    at.query_params["db"] = str(db)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    if page != "map":
        at.switch_page(PAGES[page]).run()
    assert not at.exception, at.exception
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def linked_selection(at: AppTest) -> dict:
    """What the task map's link component (explorer/link.py) got: selected ids and chart keys."""
    [link] = [el for el in at.get("bidi_component") if el.proto.component_name == "task2vec_link_maps"]
    return json.loads(link.proto.json)


def arr(value) -> np.ndarray:
    """A numeric array from figure JSON (plotly 7 writes typed arrays as base64 ``bdata``)."""
    if isinstance(value, dict) and "bdata" in value:
        data = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(x) for x in shape.split(",")]
        return data.reshape(shape) if shape else data
    return np.asarray(value)


def table(at: AppTest, column: str) -> pd.DataFrame:
    """The first data frame shown that has ``column``."""
    for df in [*at.dataframe, *at.table]:
        value = df.value.reset_index() if df.value.index.name else df.value
        if column in value.columns:
            return value
    raise AssertionError(f"no table with a {column!r} column on the page")


def points(chart: dict) -> dict[str, str]:
    """task id -> trace name for every task point of a map (the highlight ring excluded)."""
    return {cd[0]: tr["name"] for tr in chart["data"] if tr["name"] != "selected"
            for cd in tr.get("customdata") or [] if cd[0]}


@pytest.fixture(scope="module")
def library(app_library):
    con = duckdb.connect(str(app_library), read_only=True)
    try:
        ids, fisher = store.embedding_matrix(con, "rademacher")
        tasks = con.execute("SELECT task_id, name, family, taxonomy, num_train FROM tasks "
                            "ORDER BY task_id").df().set_index("task_id")
    finally:
        con.close()
    return {"ids": ids, "fisher": fisher, "tasks": tasks}


# ------------------------------------------------------------------------------ task map


def test_task_map_shows_both_maps_of_every_task(app_library, library):
    at = open_app(app_library)
    assert at.title[0].value == "Task map"
    assert f"{N_TASKS} tasks in 2 families" in at.caption[0].value
    task_map, domain_map = charts(at)
    assert "Task space" in task_map["layout"]["title"]["text"]
    assert "Domain space" in domain_map["layout"]["title"]["text"]
    for chart in (task_map, domain_map):
        shown = points(chart)
        assert sorted(shown) == library["ids"]
        assert {shown[t] for t in shown} == {"digits", "fashion"}  # coloured by family
    # same family -> same colour on both maps
    colour = lambda chart: {tr["name"]: tr["marker"]["color"] for tr in chart["data"]}
    assert colour(task_map) == colour(domain_map) == {
        f: c for f, c in figures.category_colors(["digits", "fashion"]).items()}
    # the view state is in the URL
    assert at.query_params["db"] == [str(app_library)] or at.query_params["db"] == str(app_library)


def test_colour_by_taxonomy_level_and_algorithm_from_the_url(app_library):
    at = open_app(app_library, color="level:1", algo="umap")
    assert at.selectbox(key="w_color").value == "level:1"
    assert at.selectbox(key="w_algo").value == "umap"
    task_map = charts(at)[0]
    assert "UMAP" in task_map["layout"]["title"]["text"]
    groups = {g for _, _, g in APP_DIGIT_PAIRS + APP_FASHION_PAIRS}
    assert set(points(task_map).values()) == groups
    labels = at.selectbox(key="w_color").options
    assert "taxonomy level 3" in labels and "embedding norm" in labels
    assert "best-expert test error" not in labels  # no experts in this library


def test_colour_by_norm_is_one_continuous_trace(app_library, library):
    at = open_app(app_library, color="norm")
    traces = charts(at)[0]["data"]
    assert len(traces) == 1 and traces[0]["marker"]["colorscale"]
    con = duckdb.connect(str(app_library), read_only=True)
    norms = dict(con.execute("SELECT task_id, norm FROM embeddings WHERE method='rademacher'").fetchall())
    con.close()
    shown = {cd[0]: c for cd, c in zip(traces[0]["customdata"], arr(traces[0]["marker"]["color"]))}
    assert shown == pytest.approx(norms)


def test_colour_by_diversity_where_tasks_have_it(app_library):
    """The app library's tasks (30 images) are too small for a coefficient: no such colouring.
    Given coefficients (test values, not measurements) for some tasks, the map colours by them,
    one continuous trace, and the others are a grey "no value" trace."""
    from explorer import figures, store as estore

    lib = estore.open_library(app_library)
    assert lib.tasks["diversity"].isna().all()
    assert "diversity" not in figures.color_options(lib.tasks)
    tasks = lib.tasks.copy()
    given = dict(zip(tasks.index[:5], [0.11, 0.22, 0.15, 0.3, 0.05]))
    tasks["diversity"] = pd.Series(given).reindex(tasks.index)
    assert figures.color_options(tasks)["diversity"] == "diversity coefficient"
    fig = figures.task_map(tasks, lib.map_xy("task", "tsne"), color="diversity")
    none, coloured = [t for t in fig.data if t.meta == "tasks"]
    assert none.name == "no value" and {cd[0] for cd in none.customdata} == set(tasks.index[5:])
    shown = dict(zip([cd[0] for cd in coloured.customdata], coloured.marker.color))
    assert shown == pytest.approx(given) and coloured.marker.colorscale
    with_values = dataclasses.replace(lib, tasks=tasks)  # 3 of the 5 given are below 0.2
    assert (estore.diversity_text(with_values, 0.2, batch=32)
            == "diversity 0.200 (more than 60% of the library's 5 tasks), batches of 32 images")


def test_diversity_is_placed_among_tasks_of_similar_size_when_there_are_enough(app_library):
    """Twelve tasks of 100 to 155 images with low coefficients and eight of 1,000 with high ones:
    a 120-image task is compared with the twelve (the coefficient follows size); with fewer than
    ten of a similar size, with all."""
    from explorer import store as estore

    lib = estore.open_library(app_library)
    tasks = pd.DataFrame({"num_train": [100 + 5 * i for i in range(12)] + [1000] * 8,
                          "diversity": [0.10 + 0.01 * i for i in range(12)] + [0.30] * 8},
                         index=[f"t{i}" for i in range(20)])
    lib = dataclasses.replace(lib, tasks=tasks)
    assert (estore.diversity_text(lib, 0.135, size=120)  # above 0.10 .. 0.13 of the twelve
            == "diversity 0.135 (more than 33% of the library's 12 tasks of 100 to 155 training images)")
    assert (estore.diversity_text(lib, 0.135, size=1000)  # only eight of 500 to 2,000: all twenty
            == "diversity 0.135 (more than 20% of the library's 20 tasks)")
    assert estore.diversity_text(lib, 0.135) == "diversity 0.135 (more than 20% of the library's 20 tasks)"


def test_task_card_from_the_url_shows_nearest_tasks_by_symmetric_distance(app_library, library):
    task = "digits/3-vs-8"
    at = open_app(app_library, task=task)
    assert at.subheader[0].value == "digits 3 vs 8"
    nearest = table(at, "distance")
    assert len(nearest) == N_TASKS - 1
    # hand check: the distances are d_sym of the decoded embeddings (paper section 3.3)
    i = library["ids"].index(task)
    expected = {library["tasks"].at[t, "name"]: distances.symmetric(library["fisher"][i], library["fisher"][j])
                for j, t in enumerate(library["ids"]) if t != task}
    shown = dict(zip(nearest["name"], nearest["distance"]))
    assert shown == pytest.approx(expected, abs=1e-4)  # shown rounded to 4 decimals
    assert list(nearest["distance"]) == sorted(nearest["distance"])
    classes = table(at, "class")
    assert list(classes["class"]) == ["3", "8"] and classes["images"].sum() == 30
    assert any("30 training / 10 test images" in m.value for m in at.markdown)
    # 30 training images: too few for two disjoint batches of the diversity coefficient
    assert any("diversity not defined: fewer than 64 images: no two disjoint batches of 32"
               in m.value for m in at.markdown)
    assert any("no experts yet" in i.value for i in at.info)
    # the selected task is ringed on both maps: in the browser (the maps sent do not change
    # with the selection) and in the exported figures
    assert linked_selection(at) == {"ids": [task], "charts": ["map_task", "map_domain"]}
    for chart in charts(at):
        assert [tr["meta"] for tr in chart["data"]] == ["tasks"] * len(chart["data"])
    exported = at.session_state["figures"]  # name -> builder, called on download
    assert len(exported) == 2
    for fig in (make() for make in exported.values()):
        ring = [tr for tr in fig.data if tr.meta == "ring"]
        assert [cd[0] for cd in ring[0].customdata] == [task]
        assert all(tr.marker.opacity == 0.3 for tr in fig.data if tr.meta == "tasks")
    assert at.query_params["task"] in (task, [task])


def test_choosing_a_task_in_the_picker_opens_its_card_and_selection_export(app_library):
    at = open_app(app_library)
    assert not at.subheader
    at.selectbox(key="w_task").select("fashion/5-vs-7").run()
    assert at.subheader[0].value == "fashion 5 vs 7"
    assert any("1 task selected" in m.value for m in at.markdown)
    labels = [b.label for b in at.get("download_button")]
    assert "Selection (CSV)" in labels
    assert "Figure pack (zip, 2 figures)" in labels


def picker(at: AppTest):
    """The task map's "Open a task card" selectbox (its key changes, see state.choice)."""
    [box] = [b for b in at.selectbox if b.label == "Open a task card"]
    return box


def rerun(at: AppTest, *sent: WidgetState) -> None:
    """Rerun with the widget states ``sent`` in place of those of the page (as the browser
    sends them, old widgets included: AppTest itself only sends the widgets on the page)."""
    ids = {w.id for w in sent}
    widgets = at._tree.get_widget_states()
    kept = [w for w in widgets.widgets if w.id not in ids]
    del widgets.widgets[:]
    widgets.widgets.extend([*kept, *sent])
    at._run(widgets)
    assert not at.exception, at.exception


def click_map(at: AppTest, task: str, *sent: WidgetState) -> None:
    """Rerun as the browser does after a click on ``task`` on the task map."""
    points = [{"customdata": [task], "curve_number": 0, "point_number": 0, "point_index": 0}]
    selection = {"selection": {"points": points, "point_indices": [0], "box": [], "lasso": []}}
    rerun(at, WidgetState(id=at.get("plotly_chart")[0].proto.id, string_value=json.dumps(selection)),
          *sent)


def test_a_stale_task_picker_value_does_not_undo_a_click_on_the_map(app_library):
    """Seen in Chromium with quick clicks: the rerun after a click on the map can carry the
    task picker's value from before the click. It must not reopen the previous card."""
    first, clicked, then = "digits/3-vs-8", "fashion/5-vs-7", "digits/0-vs-1"
    at = open_app(app_library, task=first)
    before = picker(at)._widget_state  # the picker on `first`
    click_map(at, clicked)
    assert at.subheader[0].value == "fashion 5 vs 7"
    assert picker(at).value == clicked
    click_map(at, clicked, before)  # the browser's next rerun, with the old picker value
    assert at.subheader[0].value == "fashion 5 vs 7"
    assert at.session_state["selected"] == [clicked]
    assert linked_selection(at)["ids"] == [clicked]
    # the picker still works after the change of key
    picker(at).select(then).run()
    assert at.subheader[0].value == "digits 0 vs 1"
    assert at.session_state["selected"] == [then]


def test_a_library_without_stored_neighbours_shows_the_same_nearest_tasks(app_library, tmp_path):
    """Files built before the neighbours table: the card computes the distance row instead."""
    old = tmp_path / "old.duckdb"
    shutil.copy(app_library, old)
    con = duckdb.connect(str(old))
    con.execute("DROP TABLE neighbours")
    con.close()
    task = "fashion/5-vs-7"
    stored = table(open_app(app_library, task=task), "distance")
    computed = table(open_app(old, task=task), "distance")
    assert len(stored) == N_TASKS - 1
    pd.testing.assert_frame_equal(stored, computed)


def test_the_same_library_by_another_path_keeps_the_selection(app_library):
    relative = os.path.relpath(app_library)
    at = open_app(relative, task="digits/3-vs-8")
    at.text_input(key="w_db_input").input(str(app_library)).run()
    assert at.subheader[0].value == "digits 3 vs 8"
    assert linked_selection(at)["ids"] == ["digits/3-vs-8"]


def test_unknown_task_in_an_old_link_is_ignored(app_library):
    at = open_app(app_library, task="nope/does-not-exist")
    assert not at.subheader and not at.error


# ------------------------------------------------------------------------------ taxonomy


def test_taxonomy_page_correlation_matches_the_analysis_code(app_library, library):
    at = open_app(app_library, "taxonomy")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Tasks"] == str(N_TASKS)
    view = analysis.LibraryView.load(app_library)
    rho, _ = analysis.taxonomy_correlation(view.task_distance, analysis.taxonomy_matrix(view.taxonomy))
    assert metrics["Spearman ρ (TASK2VEC vs taxonomy)"] == f"{rho:.3f}"
    rho_dom, _ = analysis.taxonomy_correlation(view.domain_distance, analysis.taxonomy_matrix(view.taxonomy))
    assert metrics["Spearman ρ (domain embedding)"] == f"{rho_dom:.3f}"
    heat, curve = charts(at)
    # heatmap: N x N in clustering order with the task names on the axes
    matrix = [tr for tr in heat["data"] if tr["type"] == "heatmap"][-1]
    assert arr(matrix["z"]).shape == (N_TASKS, N_TASKS)
    assert sorted(heat["layout"]["xaxis3"]["ticktext"]) == sorted(library["tasks"]["name"])
    legend = {tr["name"] for tr in heat["data"] if tr.get("showlegend")}
    assert legend == {g for _, _, g in APP_DIGIT_PAIRS + APP_FASHION_PAIRS}  # level 2 colour bar
    names = [tr["name"] for tr in curve["data"]]
    assert names[0] == "TASK2VEC" and "chance" in names
    chance = arr([tr for tr in curve["data"] if tr["name"] == "chance"][0]["y"])
    tax = analysis.taxonomy_matrix(view.taxonomy)
    assert chance[0] == pytest.approx(tax[~np.eye(N_TASKS, dtype=bool)].mean())


def test_taxonomy_filter_to_a_family(app_library):
    at = open_app(app_library, "taxonomy", branch="family:digits", level="2")
    assert {m.label: m.value for m in at.metric}["Tasks"] == str(len(APP_DIGIT_PAIRS))
    heat = charts(at)[0]
    assert heat["layout"]["title"]["text"].endswith("family digits")
    assert {tr["name"] for tr in heat["data"] if tr.get("showlegend")} == {
        f"{a}-vs-{b}" for a, b, _ in APP_DIGIT_PAIRS}


def test_taxonomy_link_to_a_branch_too_small_falls_back_to_all_tasks(app_library):
    at = open_app(app_library, "taxonomy", branch="tax:fashion/tops")
    # one task in that branch: not offered as a filter
    assert {m.label: m.value for m in at.metric}["Tasks"] == str(N_TASKS)


# ------------------------------------------------------------------------------ experts pages


SHIPPED = Path(__file__).resolve().parents[1] / "data" / "demo.duckdb"


def test_shipped_library_pages_show_its_real_matrix_and_table1():
    """data/demo.duckdb, the file `make app` opens: its experts, matrix and Table 1."""
    from precompute import store as pstore

    con = duckdb.connect(str(SHIPPED), read_only=True)
    try:
        method = pstore.task_method(pstore.get_info(con))
        results = con.execute("SELECT selector, relative_error_increase, top1 FROM selection_results "
                              "ORDER BY relative_error_increase").fetchall()
        best = dict(con.execute("SELECT task_id, min(test_error) FROM performance GROUP BY 1").fetchall())
        norms = dict(con.execute("SELECT task_id, norm FROM embeddings WHERE method = ?",
                                 [method]).fetchall())
        n_experts = con.execute("SELECT count(*) FROM experts").fetchone()[0]
    finally:
        con.close()
    assert len(best) == len(norms) and len(results) >= 8  # every task has its errors
    at = open_app(SHIPPED, "selection")
    t1 = table(at, "selector")
    assert list(t1["selector"]) == [r[0] for r in results]
    assert list(t1["relative error increase (%)"]) == pytest.approx([100 * r[1] for r in results])
    assert list(t1["top-1 (%)"]) == pytest.approx([100 * r[2] for r in results])
    at = open_app(SHIPPED, "difficulty")
    ids = sorted(best)
    rho = spearmanr([norms[t] for t in ids], [best[t] for t in ids]).statistic
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Tasks"] == f"{len(ids):,}" and metrics["Spearman ρ (norm vs error)"] == f"{rho:.3f}"
    at = open_app(SHIPPED, task="glyphs/latin")
    assert len(table(at, "test error (%)")) == min(n_experts, 10)


def test_a_library_built_with_sampled_labels_says_so_and_uploads_use_its_method(app_library,
                                                                              tmp_path):
    """A file built with the paper's montecarlo estimator (as data/demo.duckdb was before
    2026-12-01) and with no head settings recorded (every file before 2026-12-02) opens as before,
    names its estimator and head, and an upload into it is embedded with montecarlo and that
    head, so that its distances to the library's tasks stay comparable. The file is the test
    library with its Fisher method renamed and its head settings removed: what is tested is what
    the app reads."""
    import json
    import shutil

    from explorer import store as lib_store, upload
    from precompute import EmbedConfig
    from precompute.tasks import task_from_arrays

    from conftest import SIDE, tiny_probe

    db = tmp_path / "montecarlo.duckdb"
    shutil.copy(app_library, db)
    con = duckdb.connect(str(db))
    con.execute("UPDATE embeddings SET method = 'montecarlo' WHERE method = 'rademacher'")
    con.execute("UPDATE library_info SET value = ? WHERE key = 'methods'",
                [json.dumps(["montecarlo", "domain"])])
    con.execute("DELETE FROM library_info WHERE key LIKE 'head_%'")
    con.close()
    at = open_app(db)
    assert "montecarlo Fisher embedding, one head scored in-sample (L2 0.001)" in at.caption[0].value
    old, new = lib_store.open_library(db), lib_store.open_library(app_library)
    assert upload.embed_methods_for(old) == ("montecarlo", "domain")
    assert upload.embed_methods_for(new) == ("rademacher", "domain")
    assert (f"cross-fitted heads ({EmbedConfig.head_folds} folds, L2 {EmbedConfig.head_l2:g})"
            in open_app(app_library).caption[0].value)
    images = np.random.default_rng(0).integers(0, 255, (24, SIDE, SIDE), dtype=np.uint8)
    task = task_from_arrays(images, [0, 1] * 12, input_size=SIDE)
    for lib, method, folds, l2 in ((old, "montecarlo", 0, 1e-3),
                                   (new, "rademacher", EmbedConfig.head_folds, EmbedConfig.head_l2)):
        config = upload.embed_task(task, lib, tiny_probe(), lambda *a: None)[method].meta["config"]
        assert (config["head_folds"], config["head_l2"]) == (folds, l2)


@pytest.mark.parametrize("page", ["difficulty", "selection", "card"])
def test_experts_without_a_matrix_say_which_command_fills_it(app_library_experts, tmp_path, page):
    import shutil

    db = tmp_path / "no-matrix.duckdb"
    shutil.copy(app_library_experts, db)
    con = duckdb.connect(str(db))
    con.execute("DELETE FROM performance")
    con.close()
    at = open_app(db, task="fashion/7-vs-9") if page == "card" else open_app(db, page)
    assert any("has experts but no performance matrix yet" in i.value
               and "python -m precompute matrix" in i.value for i in at.info)
    assert len(charts(at)) == (2 if page == "card" else 0)  # the card's maps stay


@pytest.mark.parametrize("page", ["difficulty", "selection"])
def test_pages_without_experts_explain_how_to_build_them(app_library, page):
    at = open_app(app_library, page)
    assert any("no experts yet" in i.value and "python -m precompute experts" in i.value
               for i in at.info)
    assert not charts(at)


def test_difficulty_page_correlation_of_norm_and_best_error(app_library_experts, library):
    at = open_app(app_library_experts, "difficulty")
    errors = app_expert_errors(library["ids"])
    best = [min(v for (e, t), v in errors.items() if t == tid) for tid in library["ids"]]
    con = duckdb.connect(str(app_library_experts), read_only=True)
    norms = dict(con.execute("SELECT task_id, norm FROM embeddings WHERE method='rademacher'").fetchall())
    con.close()
    rho = spearmanr([norms[t] for t in library["ids"]], best).statistic
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Tasks"] == str(N_TASKS)
    assert metrics["Spearman ρ (norm vs error)"] == f"{rho:.3f}"
    fig = charts(at)[0]
    ys = sorted(y for tr in fig["data"] if tr["name"] in ("digits", "fashion") for y in arr(tr["y"]))
    assert ys == pytest.approx(sorted(100 * b for b in best))


def test_model_selection_page_shows_table1_and_picks(app_library_experts, library):
    at = open_app(app_library_experts, "selection")
    t1 = table(at, "selector")
    assert list(t1["selector"]) == ["model2vec", "task2vec", "chance"]  # best first
    assert list(t1["relative error increase (%)"]) == pytest.approx([5.0, 12.0, 40.0])
    assert list(t1["top-1 (%)"]) == pytest.approx([75.0, 50.0, 33.0])
    assert any("5.50%" in c.value for c in at.caption)  # optimal error
    bars, spread = charts(at)
    # evaluated before the intervals: one panel, values and spread over seeds as text
    assert bars["data"][0]["text"] == ["+5.0% ± 1.0", "+12.0% ± 3.0", "+40.0% ± 5.0"]
    assert len(bars["data"]) == 1 and not bars["data"][0].get("error_x", {}).get("array")
    names = {tr["name"] for tr in spread["data"]}
    assert {"experts", "best expert", "model2vec", "task2vec"} <= names
    # model2vec picks each family's own expert, which is the best one here
    m2v = [tr for tr in spread["data"] if tr["name"] == "model2vec"][0]
    best = [tr for tr in spread["data"] if tr["name"] == "best expert"][0]
    assert sorted(arr(m2v["y"])) == pytest.approx(sorted(arr(best["y"])))
    assert len(spread["layout"]["xaxis"]["ticktext"]) == N_TASKS


@pytest.fixture(scope="module")
def evaluated_library(app_library_experts, tmp_path_factory) -> Path:
    """``app_library_experts`` with expert embeddings (each expert: the mean Fisher of its
    family's tasks; ImageNet: the trivial embedding), transfer scores (LogME and H-score follow
    the errors, k-NN and LEEP with noise; NCE left empty, as in a file made before it) and a
    real held-out evaluation by ``selection.evaluate``."""
    from precompute import selection

    db = tmp_path_factory.mktemp("evaluated") / "evaluated.duckdb"
    shutil.copy(app_library_experts, db)
    con = duckdb.connect(str(db))
    try:
        info = store.get_info(con)
        con.execute(store.expert_schema(int(info["filters"])))
        method = store.task_method(info)
        ids, fisher = store.embedding_matrix(con, method)
        trivial = con.execute("SELECT trivial_level FROM embeddings WHERE method = ? LIMIT 1",
                              [method]).fetchone()[0]
        for expert_id, family in (("e_digits", "digits"), ("e_fashion", "fashion"), ("e_imagenet", None)):
            value = (fisher[[i for i, t in enumerate(ids) if t.startswith(family)]].mean(0) if family
                     else np.full(fisher.shape[1], trivial, np.float32))
            con.execute("INSERT INTO expert_embeddings VALUES (?, ?, ?, ?)",
                        [expert_id, store.encode(value), trivial, float(value.sum())])
        rng = np.random.default_rng(0)
        for (e, t), err in app_expert_errors(ids).items():
            con.execute("INSERT INTO feature_scores (expert_id, task_id, logme, knn_accuracy, "
                        "feature_seconds, logme_seconds, knn_seconds, hscore, hscore_seconds, leep, "
                        "leep_seconds) VALUES (?, ?, ?, ?, 0.5, 0.01, 0.02, ?, 0.03, ?, 0.04)",
                        [e, t, -err, 1 - err + rng.normal(0, 0.1), -err, rng.normal()])
        selection.evaluate(con, seeds=2, folds=2, progress=False, m2v_options={"steps": 10})
    finally:
        con.close()
    return db


def stored_results(db) -> dict[str, dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0]: {"rel": r[1], **json.loads(r[2])} for r in con.execute(
            "SELECT selector, relative_error_increase, meta FROM selection_results").fetchall()}
    finally:
        con.close()


def test_model_selection_page_shows_tau_regret_and_intervals(evaluated_library):
    from explorer import export

    stored = stored_results(evaluated_library)
    at = open_app(evaluated_library, "selection")
    t1 = table(at, "selector").set_index("selector")
    assert set(t1.index) == set(stored) and "nce" not in stored
    for name, r in stored.items():
        assert t1.loc[name, "regret (points)"] == pytest.approx(100 * r["regret"])
        if r["tau_tasks"]:
            assert t1.loc[name, "weighted τ"] == pytest.approx(r["tau"])
            assert t1.loc[name, "τ 95% interval"] == f"[{r['tau_ci'][0]:+.3f}, {r['tau_ci'][1]:+.3f}]"
        else:  # no task to compare orders on: shown empty, not as 0
            assert np.isnan(t1.loc[name, "weighted τ"]) and t1.loc[name, "τ 95% interval"] == ""
    # logme's scores are -error: tau 1; the "imagenet" selector finds no expert with that id
    # here (the fixture's is e_imagenet), so its scores all tie and tau is undefined
    assert t1.loc["logme", "weighted τ"] == pytest.approx(1.0) and stored["imagenet"]["tau_tasks"] == 0
    assert any("Not evaluated in this library: **nce**" in c.value for c in at.caption)
    # the paired differences, as evaluate stored them, with the order each interval establishes
    con = duckdb.connect(str(evaluated_library), read_only=True)
    paired = store.get_info(con)["selection"]["paired"]
    con.close()
    shown = table(at, "a − b").set_index("a − b")
    assert list(shown.index) == [p.replace(" - ", " − ") for p in paired] and len(paired) == 5
    for pair, d in paired.items():
        row = shown.loc[pair.replace(" - ", " − ")]
        mean, lo, hi = d["regret"]
        assert row["regret (points)"] == pytest.approx(100 * mean)
        assert row["regret (points) interval"] == f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"
        assert row["a better in regret"] == ("yes" if hi < 0 else "no: b better" if lo > 0
                                             else "not established")
        mean, lo, hi = d["tau"]
        assert row["a better in weighted τ"] == ("yes" if lo > 0 else "no: b better" if hi < 0
                                                 else "not established")
    bars = charts(at)[0]
    panels = [tr for tr in bars["data"] if tr["type"] == "bar"]
    assert [bars["layout"][f"xaxis{i or ''}"]["title"]["text"] for i in (0, 2, 3)] == [
        "relative error increase (%)", "regret (error points)", "weighted Kendall τ"]
    tau = panels[2]
    names = list(tau["y"])
    v, plus, minus = arr(tau["x"]), arr(tau["error_x"]["array"]), arr(tau["error_x"]["arrayminus"])
    shown = [i for i, n in enumerate(names) if stored[n]["tau_tasks"]]
    np.testing.assert_allclose((v + plus)[shown], [stored[names[i]]["tau_ci"][1] for i in shown], atol=1e-9)
    np.testing.assert_allclose((v - minus)[shown], [stored[names[i]]["tau_ci"][0] for i in shown], atol=1e-9)
    assert all("text" not in tr for tr in panels)  # values would sit on the error bars
    fig = figures.selection_bar_figure(estore_results(evaluated_library))
    assert "weighted Kendall" in export.to_image(fig, "svg").decode()


def estore_results(db):
    from explorer import store as estore

    return estore.selection_results(estore.open_library(db))


def test_task_card_lists_best_experts_and_colour_by_error(app_library_experts):
    at = open_app(app_library_experts, task="fashion/7-vs-9", color="best_error")
    experts = table(at, "test error (%)")
    assert list(experts["name"]) == ["fashion expert", "ImageNet", "digits expert"]
    assert experts["test error (%)"].iloc[0] == pytest.approx(100 * (0.02 + 0.01 * 7))


# ------------------------------------------------------------------------------ library choice


def test_missing_library_file_gives_a_message_not_a_traceback(tmp_path):
    at = open_app(tmp_path / "nothing.duckdb")
    assert "no library file at" in at.error[0].value


def test_a_file_that_is_not_a_library_is_refused(tmp_path):
    db = tmp_path / "other.duckdb"
    duckdb.connect(str(db)).execute("CREATE TABLE t (x INTEGER)").close()
    at = open_app(db)
    assert "is not a task library" in at.error[0].value


def test_switching_library_in_the_sidebar(app_library, app_library_experts):
    at = open_app(app_library, task="digits/0-vs-1")
    at.text_input(key="w_db_input").input(str(app_library_experts)).run()
    assert "best-expert test error" in at.selectbox(key="w_color").options
    assert not at.subheader  # the selection belonged to the other library


def test_a_stale_library_path_does_not_undo_a_library_picked_in_the_list(app_library):
    """The two library choosers show the same file: after a pick in the list, the path field's
    old value, sent again by the browser, must not switch back."""
    at = open_app(app_library)
    typed = at.text_input[0]._widget_state  # the path field on app_library
    [pick] = [b for b in at.selectbox if b.label == "or pick one"]
    demo = str(state.DEFAULT_LIBRARY)
    pick.select(demo).run()
    assert at.session_state["db"] == demo and at.text_input[0].value == demo
    rerun(at, typed)
    assert at.session_state["db"] == demo
    con = duckdb.connect(demo, read_only=True)
    n = con.execute("SELECT count(*) FROM tasks").fetchone()[0]
    con.close()
    assert f"{n} tasks" in at.caption[0].value  # the demo library's task map


def test_library_from_command_line_arguments():
    assert state.library_from_args(["--db", "a.duckdb"]) == "a.duckdb"
    assert state.library_from_args(["--db=b.duckdb"]) == "b.duckdb"
    assert state.library_from_args(["-x"]) is None


def test_library_file_is_never_written(app_library, library):
    before = app_library.stat().st_mtime_ns
    open_app(app_library, "taxonomy")
    open_app(app_library, task="digits/0-vs-1")
    assert app_library.stat().st_mtime_ns == before


# ------------------------------------------------------------------------------ upload


def zip_of_class_folders(images, labels, classes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, (img, lab) in enumerate(zip(images, labels)):
            if lab in classes:
                png = io.BytesIO()
                Image.fromarray(img).save(png, format="PNG")
                zf.writestr(f"task/{lab}/{k}.png", png.getvalue())
    return buf.getvalue()


def test_the_example_upload_is_three_footwear_classes_from_the_test_split(app_library, tmp_path):
    """The one-click example: 3 x 60 Fashion-MNIST test-split images, the same on every click,
    embedded like any upload; its nearest library tasks are the footwear pairs."""
    import zipfile

    from explorer import store as estore

    files = up.example_upload()
    time.sleep(2.1)  # zip entries carry a time stamp (2 s resolution): not this one's
    assert up.example_upload() == files  # seeded: the same bytes every time
    (name, data), = files
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    folders = {n.split("/")[0] for n in names}
    assert folders == {"Sandal", "Sneaker", "Ankle_boot"} and len(names) == 3 * up.EXAMPLE_PER_CLASS
    assert all(int(n.split("/")[1][:-4]) >= up.FASHION_TEST_START for n in names)
    lib = estore.open_library(app_library)
    result = up.process(lib, files, tmp_path, "efficientnet_lite0", up.EXAMPLE_NAME)
    assert result["size"] == 180 and result["classes"] == ["Ankle_boot", "Sandal", "Sneaker"]
    # the library's footwear tasks (5 vs 7: sandal vs sneaker, 7 vs 9: sneaker vs ankle boot)
    assert set(result["nearest"].index[:2]) == {"fashion/5-vs-7", "fashion/7-vs-9"}
    # 180 images: five disjoint batches of 32 (none of the library's tasks has a coefficient)
    div = result["diversity"]
    assert div["batch"] == 32 and 0 < div["value"] < 1 and div["reason"] is None
    assert estore.diversity_text(lib, **div) == f"diversity {div['value']:.3f}, batches of 32 images"


def test_the_example_upload_names_the_package_when_fashion_mnist_is_missing(tmp_path):
    expect_error(lambda: up.example_upload(root=tmp_path), "Fashion-MNIST not found", str(tmp_path),
                 "dataset-fashion-mnist")


def test_upload_is_placed_among_its_nearest_tasks(app_library, digits, tmp_path):
    from explorer import store as estore

    images, labels = digits
    data = zip_of_class_folders(images[300:360], labels[300:360], {3, 8})
    lib = estore.open_library(app_library)
    result = up.process(lib, [("pairs.zip", data)], tmp_path, "efficientnet_lite0", "my 3 vs 8")
    assert result["size"] == sum(1 for l in labels[300:360] if l in {3, 8})
    assert result["classes"] == ["3", "8"]
    nearest = result["nearest"]
    assert len(nearest) == N_TASKS and list(nearest["distance"]) == sorted(nearest["distance"])
    # the position on each map is the 1/d-weighted mean of the 5 nearest tasks' positions
    xy = lib.map_xy("task", "tsne")
    near = nearest["distance"].iloc[:up.NEIGHBOURS]
    w = 1 / near.to_numpy()
    expect = (w[:, None] * xy.loc[near.index].to_numpy()).sum(0) / w.sum()
    assert result["positions"]["task"]["tsne"] == pytest.approx(tuple(expect))
    assert set(result["positions"]) == {"task", "domain"}
    assert result["experts"] is None and "no experts yet" in result["experts_note"]
    assert result["diversity"] == {"value": None, "batch": 32, "reason": "fewer than 64 images: "
                                   "no two disjoint batches of 32"}  # 60 images
    # the embedding file round-trips and is the library's kind of embedding
    from precompute import TaskEmbedding

    (tmp_path / "e.npz").write_bytes(result["embedding_npz"])
    emb = TaskEmbedding.load(tmp_path / "e.npz")
    assert emb.method == "rademacher" and emb.meta["input_size"] == 32
    assert emb.values.shape == (library_filters(app_library),)


def library_filters(db) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return store.get_info(con)["filters"]
    finally:
        con.close()


def test_upload_of_images_with_a_labels_csv(tmp_path, digits):
    images, labels = digits
    files, rows = [], ["path,label"]
    for k in range(12):
        png = io.BytesIO()
        Image.fromarray(images[k]).save(png, format="PNG")
        files.append((f"img{k}.png", png.getvalue()))
        rows.append(f"some/folder/img{k}.png,{labels[k] % 2}")
    files.append(("labels.csv", "\n".join(rows).encode()))
    path = up.save_uploads(files, tmp_path)
    from precompute.tasks import load_task

    task = load_task(path, input_size=32)
    assert task.size == 12 and task.classes == ["0", "1"]


@pytest.mark.parametrize("files, phrase", [
    ([("a.zip", b"PK"), ("b.csv", b"path,label")], "not a zip together with other files"),
    ([("a.png", b"x")], "one .csv with path,label columns"),
    ([("a.png", b"x"), ("l.csv", b"file,class\na.png,1")], "needs a header with path and label"),
    ([("notes.txt", b"x"), ("l.csv", b"path,label\n")], "neither an image nor the labels .csv"),
])
def test_bad_uploads_are_refused_before_any_work(tmp_path, files, phrase):
    with pytest.raises(Task2VecError, match=phrase):
        up.save_uploads(files, tmp_path)


def test_upload_with_one_class_gives_the_readers_message(app_library, digits, tmp_path):
    from explorer import store as estore

    images, labels = digits
    data = zip_of_class_folders(images[:100], labels[:100], {3})
    lib = estore.open_library(app_library)
    with pytest.raises(Task2VecError, match="class"):
        up.process(lib, [("one.zip", data)], tmp_path, "efficientnet_lite0", "one class")


def upload_embedding(db, task_id: str) -> np.ndarray:
    """A library task's own stored Fisher embedding, standing in for an upload's."""
    from explorer import store as estore

    lib = estore.open_library(db)
    return estore.task_embedding(lib, task_id, lib.task_method)


def test_upload_ranks_with_the_best_embedding_only_selector_of_the_evaluation(evaluated_library):
    from explorer import store as estore
    from precompute import selection, selectors

    lib = estore.open_library(evaluated_library)
    ranked = up.rank_experts(lib, upload_embedding(evaluated_library, "fashion/0-vs-2"))
    stored = stored_results(evaluated_library)
    # the least held-out relative error increase among the embedding-only selectors, chance
    # excluded, ties in registry order; LogME and H-score (perfect here) need every expert's
    # features of the upload, so they do not compete
    allowed = [s for s in selectors.EMBEDDING_SELECTORS if s != "chance"]
    best = min(allowed, key=lambda s: (stored[s]["rel"], allowed.index(s)))
    assert stored["logme"]["rel"] <= stored[best]["rel"]
    assert ranked["selector"] == best
    assert f"held-out relative error increase {100 * stored[best]['rel']:+.1f}%" in ranked["selector_note"]
    con = duckdb.connect(str(evaluated_library), read_only=True)
    try:
        values = upload_embedding(evaluated_library, "fashion/0-vs-2")
        assert list(ranked["experts"]["expert_id"]) == list(
            selection.rank_experts(con, values, selector=best)["expert_id"])
        others = ranked["others"].set_index("selector")
        assert set(others.index) == set(allowed) - {best}
        for name in others.index:
            assert others.loc[name, "first choice"] == selection.rank_experts(con, values, selector=name)["name"][0]
            assert others.loc[name, "held-out rel. error increase (%)"] == pytest.approx(100 * stored[name]["rel"])
    finally:
        con.close()


def test_upload_into_a_library_without_an_evaluation_uses_the_default(evaluated_library, tmp_path):
    from explorer import store as estore
    from precompute import selection

    db = tmp_path / "unevaluated.duckdb"
    shutil.copy(evaluated_library, db)
    con = duckdb.connect(str(db))
    selection.drop_evaluation(con)
    con.close()
    ranked = up.rank_experts(estore.open_library(db), upload_embedding(db, "digits/0-vs-1"))
    assert ranked["selector"] == up.DEFAULT_SELECTOR == "task2vec"
    assert "no held-out evaluation" in ranked["selector_note"]
    assert "python -m precompute evaluate" in ranked["selector_note"]
    # the learned selectors have nothing fitted to rank with: only ImageNet stands beside it
    assert list(ranked["others"]["selector"]) == ["imagenet"]
    assert ranked["others"]["held-out rel. error increase (%)"].isna().all()


def test_upload_page_shows_a_stored_result(evaluated_library, digits, tmp_path):
    from explorer import store as estore

    images, labels = digits
    lib = estore.open_library(evaluated_library)
    result = up.process(lib, [("p.zip", zip_of_class_folders(images[400:460], labels[400:460], {1, 7}))],
                        tmp_path, "efficientnet_lite0", "ones and sevens")
    at = AppTest.from_file("../app.py", default_timeout=180)
    at.query_params["db"] = str(evaluated_library)
    at.run()
    at.session_state["upload"] = result
    at.switch_page(PAGES["upload"]).run()
    assert not at.exception
    assert at.subheader[0].value.startswith("ones and sevens")
    shown = table(at, "distance")
    assert list(shown["name"]) == list(result["nearest"]["name"])
    assert "efficientnet_lite0" in at.caption[0].value
    # the experts, ranked by the selector the evaluation found best, named with its score;
    # the other embedding-only selectors' first choices beside it
    assert "held-out relative error increase" in result["selector_note"]
    assert result["selector_note"] in [c.value for c in at.caption]
    assert list(table(at, "score")["expert_id"]) == list(result["experts"]["expert_id"])
    picks = table(at, "first choice")
    assert list(picks["selector"]) == list(result["other_picks"]["selector"])
    maps = charts(at)
    assert [tr for tr in maps[0]["data"] if tr["name"] == "upload: ones and sevens"]
    # the task map page shows the upload too
    at.switch_page(PAGES["map"]).run()
    assert any(tr["name"] == "upload: ones and sevens" for tr in charts(at)[0]["data"])


# ------------------------------------------------------------------------------ figures / export


def test_family_colours_are_stable_and_distinct():
    a = figures.category_colors(["b", "a", "c", "a"])
    assert a == figures.category_colors(["c", "b", "a"])
    assert len(set(a.values())) == 3


def test_heatmap_hides_labels_that_would_overlap(app_library):
    from explorer import store as estore

    lib = estore.open_library(app_library)
    dist = estore.distance_matrix(lib)
    fig = figures.distance_heatmap(dist, lib.tasks, 1, max_labels=4)
    assert fig.layout.xaxis3.showticklabels is False and fig.layout.yaxis3.showticklabels is False


def test_export_png_svg_and_pack():
    from explorer import export

    fig = figures.neighbourhood_figure({"k": np.arange(1, 4), "embedding": [1, 2, 3],
                                        "taxonomy": [0.5, 1, 2], "chance": [3, 3, 3]}, 0.5)
    png = export.to_image(fig, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = Image.open(io.BytesIO(png)).size
    assert (w, h) == (export.WIDTH * export.PNG_SCALE, export.HEIGHT * export.PNG_SCALE)
    svg = export.to_image(fig, "svg").decode()
    assert svg.startswith("<svg") and "chance" in svg
    pack = zipfile.ZipFile(io.BytesIO(export.figure_pack({"Curve one": fig})))
    assert sorted(pack.namelist()) == ["curve-one.png", "curve-one.svg"]
    with pytest.raises(Task2VecError, match="png or svg"):
        export.to_image(fig, "gif")


def test_large_maps_stay_vector_graphics():
    n = 1500
    rng = np.random.default_rng(0)
    tasks = pd.DataFrame({"family": rng.choice(["a", "b"], n), "name": [f"t{i}" for i in range(n)],
                          "taxonomy": [("r", "x")] * n, "classes": [("c1", "c2")] * n,
                          "size": 10, "norm": 1.0, "best_error": np.nan},
                         index=[f"id{i}" for i in range(n)])
    xy = pd.DataFrame(rng.normal(size=(n, 2)), columns=["x", "y"], index=tasks.index)
    fig = figures.task_map(tasks, xy)
    assert {tr.type for tr in fig.data} == {"scatter"}  # not scattergl: SVG export keeps vectors
    assert sum(len(tr.x) for tr in fig.data) == n
