"""Speed of the explorer, measured in the real app (`streamlit run app.py`) in headless Chromium.

- cold start: server process start -> the task map's points drawn, for the demo library
  (data/demo.duckdb, if built) and for a generated 1,500-task library (targets 5 s and 8 s);
- selection: click on a task on the map -> the task ringed on both maps (the linked views,
  drawn in the page), and -> its card shown too (the server's rerun) (target 0.5 s; the
  embedding matrix is warm, as after the first seconds of a session);
- upload: a 500-image, 10-class zip (Fashion-MNIST) -> its nearest tasks shown (target 15 s).

The 1,500-task library is SYNTHETIC, for timing only: random Fisher-like embeddings (log-normal
around a per-family profile, plus the trivial level), random map coordinates per family, tiny
thumbnails, and each task's stored nearest tasks as a build writes them; it is written through
precompute.store with the real probe's 42,016 filters so every query, decode and distance
costs what it would on a real library.

    .venv/bin/python benchmarks/bench_app.py [--runs 3] [--skip-upload]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from e2e.server import CHROMIUM, CHROMIUM_ARGS, streamlit_server  # noqa: E402
from load_test import fashion_zip  # noqa: E402  (the same 10-class zip the load test uploads)

SYNTHETIC = ROOT / "build" / "bench" / "synthetic-1500-v2.duckdb"  # v2: with neighbour lists
DEMO = ROOT / "data" / "demo.duckdb"
FILTERS = 42_016  # efficientnet_lite0


def synthetic_library(path: Path, n_tasks: int = 1500, families: int = 12, seed: int = 0) -> Path:
    """Write the synthetic timing library (see the module docstring); reused if present."""
    if path.exists():
        return path
    import duckdb
    import pyarrow as pa
    from PIL import Image

    from precompute import store

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".building")
    tmp.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    con = store.connect(tmp, FILTERS)
    store.set_info(con, library="synthetic-1500 (timing only, random embeddings)",
                   probe="efficientnet_lite0", methods=["rademacher", "domain"], input_size=64,
                   seed=seed, filters=FILTERS, layers=[["synthetic", FILTERS]],
                   schema_version=store.SCHEMA_VERSION)
    fam = rng.integers(0, families, n_tasks)
    ids = [f"synthetic/f{f:02d}/task{i:04d}" for i, f in enumerate(fam)]
    profiles = rng.normal(0, 1.0, (families, FILTERS)).astype(np.float32)
    trivial = 1e-5
    tasks, emb_ids, emb_methods, values, norms = [], [], [], [], []
    for i, (tid, f) in enumerate(zip(ids, fam)):
        k = int(rng.integers(2, 20))
        counts = rng.integers(20, 400, k).tolist()
        tasks.append((tid, f"family{f:02d}", f"synthetic task {i}", ["synthetic", f"family{f:02d}",
                      f"group{i % 5}", tid], [f"class{c}" for c in range(k)], counts, sum(counts),
                      sum(counts) // 4, "{}"))
        fisher = (trivial + 1e-4 * np.exp(profiles[f] + 0.7 * rng.normal(size=FILTERS))).astype(np.float32)
        domain = (profiles[f] + 0.3 * rng.normal(size=FILTERS)).astype(np.float32)
        for method, v in (("rademacher", fisher), ("domain", domain)):
            emb_ids.append(tid)
            emb_methods.append(method)
            values.append(store.encode(v))
            norms.append(float(np.abs(v).sum()))
    con.executemany("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", tasks)
    flat = pa.array(np.concatenate(values), type=pa.uint16())
    table = pa.table({"task_id": emb_ids, "method": emb_methods,
                      "value": pa.FixedSizeListArray.from_arrays(flat, FILTERS), "norm": norms})
    con.register("emb", table)
    con.execute(f"INSERT INTO embeddings SELECT task_id, method, value::USMALLINT[{FILTERS}], "
                f"CASE WHEN method = 'domain' THEN NULL ELSE {trivial} END, norm, 1.0, '{{}}' FROM emb")
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(png, format="PNG")
    con.executemany("INSERT INTO thumbnails VALUES (?, ?, ?, ?)",
                    [(t, p, f"class{p}", png.getvalue()) for t in ids for p in range(6)])
    # The task cards' nearest tasks, as a build stores them (all pairs: about a minute).
    fisher = store.decode(np.stack(values[0::2]))
    from precompute import distances

    store.write_neighbours(con, ids, distances.symmetric_matrix(fisher))
    del fisher
    centres = rng.normal(0, 30, (families, 2))
    for space in ("task", "domain"):
        for algorithm in ("tsne", "umap"):
            xy = centres[fam] + rng.normal(0, 4, (n_tasks, 2))
            store.write_map(con, space, algorithm, ids, xy, {"synthetic": True})
    con.execute("CHECKPOINT")
    con.close()
    os.replace(tmp, path)
    return path


def map_points(db: Path) -> int:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM maps WHERE space='task' AND algorithm='tsne'").fetchone()[0]
    finally:
        con.close()


def first_points(page):
    return page.locator('[data-testid="stPlotlyChart"]').first.locator(".scatterlayer .point")


def cold_start(browser, db: Path, runs: int, log: Path) -> list[float]:
    """Seconds from launching the server process to the task map drawn with every task."""
    n = map_points(db)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        with streamlit_server(db, log=log) as url:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            page.wait_for_function(
                "n => { const c = document.querySelector('[data-testid=\"stPlotlyChart\"]');"
                " return c && c.querySelectorAll('.scatterlayer .point').length >= n; }",
                arg=n, timeout=120_000, polling=50)
            times.append(time.perf_counter() - t0)
            page.close()
    return times


# Both maps ring exactly the clicked task (drawn in the page by explorer/assets/link_maps.js).
RINGED = """want => {
  const maps = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].slice(0, 2);
  return maps.length === 2 && maps.every(m => {
    const rings = m.querySelectorAll('g.task2vec-rings circle');
    return rings.length === 1 && rings[0].getAttribute('data-task') === want;
  });
}"""
# ... and the clicked task's card is shown, and the server is done.
SELECTION_SHOWN = f"""want => {{
  if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
  const ids = [...document.querySelectorAll('[data-testid="stCaptionContainer"] code')].map(c => c.textContent);
  return ids.includes(want) && ({RINGED})(want);
}}"""

# The task under the mouse: where markers overlap, the one Plotly hovers (and a click selects)
# need not be the one whose centre the mouse is on.
MAP = '[data-testid="stPlotlyChart"] .js-plotly-plot'
HOVERED_TASK = f"""() => {{
  const h = document.querySelector('{MAP}')._hoverdata;
  return h && h.length ? h[0].customdata[0] : null;
}}"""
FORGET_HOVER = f"() => {{ document.querySelector('{MAP}')._hoverdata = undefined; }}"


def selection_latency(browser, db: Path, clicks: int, log: Path) -> tuple[list[float], list[float]]:
    """Seconds from a click on a task to both maps ringing it (the linked views), and to its
    card shown as well (the server's rerun); back to back: each click as soon as the previous
    one is shown."""
    rings, times = [], []
    with streamlit_server(db, log=log) as url:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        first_points(page).first.wait_for(timeout=120_000)
        page.wait_for_timeout(12000)  # let the background decode of the embeddings finish
        pts = first_points(page)
        count = pts.count()
        shown, n = None, 0
        for k in range(clicks + 1):  # the first click warms the card's code paths
            want = shown
            while want == shown:  # a task other than the one shown
                box = pts.nth((n * 7919) % count).bounding_box()
                n += 1
                page.evaluate(FORGET_HOVER)
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                want = page.wait_for_function(HOVERED_TASK, timeout=10_000, polling=10).json_value()
            t0 = time.perf_counter()
            page.mouse.down()
            page.mouse.up()
            page.wait_for_function(RINGED, arg=want, timeout=60_000, polling=5)
            t1 = time.perf_counter()
            page.wait_for_function(SELECTION_SHOWN, arg=want, timeout=60_000, polling=10)
            shown = want
            if k:
                rings.append(t1 - t0)
                times.append(time.perf_counter() - t0)
        page.close()
    return rings, times


def upload_time(browser, db: Path, archive: Path, runs: int, log: Path) -> list[float]:
    """Seconds from pressing "Embed and place" to the nearest tasks shown (server warm)."""
    times = []
    with streamlit_server(db, log=log) as url:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        for _ in range(runs):
            page.goto(f"{url}/upload")
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(archive))
            page.get_by_text(archive.name).wait_for(timeout=60_000)
            t0 = time.perf_counter()
            page.get_by_role("button", name="Embed and place").click()
            page.get_by_text("Nearest library tasks").wait_for(timeout=300_000)
            times.append(time.perf_counter() - t0)
        page.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--skip-upload", action="store_true")
    ap.add_argument("--demo", type=Path, default=DEMO, help="the demo library file")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    t = time.perf_counter()
    synthetic = synthetic_library(SYNTHETIC)
    print(f"synthetic 1,500-task library: {synthetic} ({time.perf_counter() - t:.1f} s)", flush=True)
    libraries = {"synthetic 1,500 tasks": (synthetic, 8.0)}
    if args.demo.exists():
        libraries = {f"demo ({args.demo.name})": (args.demo, 5.0), **libraries}
    else:
        print(f"demo library {args.demo} not built yet: cold start measured on the synthetic one only")
    log = Path(tempfile.gettempdir()) / "bench_app_server.log"
    results = {"load_average": os.getloadavg()}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for label, (db, target) in libraries.items():
            times = cold_start(browser, db, args.runs, log)
            results[f"cold start, {label}"] = times
            print(f"cold start, {label} ({map_points(db)} tasks): median {statistics.median(times):.2f} s "
                  f"(runs: {', '.join(f'{x:.2f}' for x in times)}); target <= {target:.0f} s", flush=True)
        for label, (db, _) in libraries.items():
            rings, times = selection_latency(browser, db, args.clicks, log)
            results[f"selection rings, {label}"] = rings
            results[f"selection card, {label}"] = times
            for what, t in (("linked rings", rings), ("rings + card", times)):
                print(f"selection, {what}, {label}: median {statistics.median(t):.3f} s, max "
                      f"{max(t):.3f} s over {len(t)} clicks; target <= 0.5 s", flush=True)
        if not args.skip_upload:
            db = args.demo if args.demo.exists() else synthetic
            with tempfile.TemporaryDirectory() as tmp:
                archive = fashion_zip(Path(tmp) / "fashion500.zip", 500)
                times = upload_time(browser, db, archive, args.runs, log)
            results["upload 500 images"] = times
            print(f"upload of 500 images / 10 classes into {db.name}: median "
                  f"{statistics.median(times):.2f} s (runs: {', '.join(f'{x:.2f}' for x in times)}); "
                  "target <= 15 s", flush=True)
        browser.close()
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
