"""Load test of the explorer: many browsing sessions and a few uploads at the same time.

Starts the real app (`streamlit run app.py`, tests/e2e/server.py) on loopback, opens ONE headless
Chromium with ``--browsers`` contexts that browse (open the app, switch between Task map /
Taxonomy / Difficulty / Model selection, reopen the map with other colourings) and
``--uploaders`` contexts that each upload a small real dataset (Fashion-MNIST, ``--images``
images in 10 class folders, zipped) at the same time, for ``--duration`` seconds.

Measured per page navigation: the time from the click (or goto) until the page's main content
is visible (its title, and on the task map the first map's points). Measured for the server
alone: the latency of its health endpoint, probed every 0.5 s during the load. Counted as errors:
Streamlit exception blocks, console errors, and waits that time out. For each upload: the time
from the click to its nearest tasks shown, and the queue positions ("Waiting: K upload(s) ahead
of yours") it saw.

    .venv/bin/python benchmarks/load_test.py [--db FILE] [--duration 90] [--browsers 20]
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import re
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from e2e.server import CHROMIUM, CHROMIUM_ARGS, streamlit_server  # noqa: E402

DEMO = ROOT / "data" / "demo.duckdb"
FASHION = Path("/usr/share/datasets/fashion-mnist")
PAGES = [("Taxonomy", "Taxonomy"), ("Difficulty", "Difficulty"),
         ("Model selection", "Model selection"), ("Task map", "Task map")]
COLOURINGS = ["norm", "level:1", "family"]
WAITING = re.compile(r"Waiting: (\d+) upload\(s\) ahead of yours")


def fashion_zip(path: Path, n: int, offset: int = 0) -> Path:
    """``n`` Fashion-MNIST test images, n / 10 per class, as class folders in one zip."""
    from PIL import Image

    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    per = max(n // 10, 1)
    with zipfile.ZipFile(path, "w") as zf:
        for c in range(10):
            for i in np.flatnonzero(labels == c)[offset:offset + per]:
                png = io.BytesIO()
                Image.fromarray(images[i]).save(png, format="PNG")
                zf.writestr(f"task/{c}/{i}.png", png.getvalue())
    return path


class Stats:
    def __init__(self):
        self.nav: list[tuple[str, float]] = []  # (page, seconds)
        self.first: list[float] = []  # each session's first open, also in nav
        self.errors: list[str] = []
        self.uploads: list[dict] = []
        self.pages_seen: set[str] = set()
        self.external: list[str] = []  # console errors of other origins (offline machine)
        self.ready = 0  # uploaders at their button (or failed before it)
        self.health: list[float] = []  # seconds per /_stcore/health request during the load


async def probe_health(url: str, stats: Stats, stop: asyncio.Event, every: float = 0.5) -> None:
    """The server's own responsiveness while the browsers load it: Streamlit's health endpoint,
    answered by the same event loop that serves the pages' websockets."""
    import urllib.request

    def get() -> None:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=60) as r:
            r.read()

    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            await asyncio.to_thread(get)
            stats.health.append(time.perf_counter() - t0)
        except OSError as exc:
            stats.errors.append(f"health probe: {exc}")
        await asyncio.sleep(every)


async def content_visible(page, title: str, timeout_ms: int) -> None:
    await page.locator("h1", has_text=re.compile(f"^{re.escape(title)}$")).first.wait_for(
        state="visible", timeout=timeout_ms)
    if title == "Task map":
        await page.locator('[data-testid="stPlotlyChart"] .scatterlayer .point').first.wait_for(
            state="visible", timeout=timeout_ms)


async def check_exceptions(page, stats: Stats, where: str) -> None:
    n = await page.locator('[data-testid="stException"]').count()
    if n:
        stats.errors.append(f"{where}: {n} exception block(s)")


def watch_console(page, stats: Stats, who: str, origin: str) -> None:
    """Console errors of the app count; failed fetches of other origins (this machine is
    offline: Material icon SVGs from fonts.gstatic.com) and Streamlit's deep-link probing are
    noted apart."""
    def on_console(m):
        if m.type != "error":
            return
        where = (m.location or {}).get("url", "")
        line = f"{who} console: {m.text[:160]} ({where})"
        # Streamlit's client first asks for /<page>/_stcore/{health,host-config} on a deep
        # link and falls back to /_stcore/... on the 404: its own probing, not an app error
        probing = re.search(r"/[^/]+/_stcore/(health|host-config)$", where)
        if (where and not where.startswith(origin)) or probing:
            stats.external.append(line)
        else:
            stats.errors.append(line)

    page.on("console", on_console)
    page.on("pageerror", lambda e: stats.errors.append(f"{who} page error: {str(e)[:200]}"))


async def browse(browser, url: str, k: int, deadline: float, stats: Stats, timeout_ms: int,
                 max_navs: int, min_navs: int) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    who = f"browser {k}"
    watch_console(page, stats, who, url)
    navs, step = 0, k  # each session starts at another point of the round
    try:
        while navs < min_navs or (time.monotonic() < deadline and navs < max_navs):
            if navs == 0 or step % (len(PAGES) + 1) == len(PAGES):
                colour = COLOURINGS[(k + step) % len(COLOURINGS)]
                title, action = "Task map", page.goto(f"{url}/?color={colour}", timeout=timeout_ms)
            else:
                link, title = PAGES[step % (len(PAGES) + 1)]
                action = page.locator('[data-testid="stSidebarNav"]').get_by_text(
                    link, exact=True).click(timeout=timeout_ms)
            t0 = time.perf_counter()
            try:
                await action
                await content_visible(page, title, timeout_ms)
                stats.nav.append((title, time.perf_counter() - t0))
                if navs == 0:
                    stats.first.append(stats.nav[-1][1])
                stats.pages_seen.add(title)
            except Exception as exc:  # noqa: BLE001 - a timeout is a counted error
                stats.errors.append(f"{who} {title}: {type(exc).__name__}: {str(exc)[:120]}")
            await check_exceptions(page, stats, f"{who} {title}")
            navs += 1
            step += 1
    finally:
        await context.close()


async def upload(browser, url: str, k: int, archive: Path, stats: Stats, timeout_ms: int,
                 start: asyncio.Event) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1600})
    page = await context.new_page()
    who = f"uploader {k}"
    watch_console(page, stats, who, url)
    record = {"who": who, "positions": [], "seconds": None, "shown": False}
    stats.uploads.append(record)
    try:
        try:
            await page.goto(f"{url}/upload", timeout=timeout_ms)
            await content_visible(page, "Upload a task", timeout_ms)
            await page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
                str(archive))
            await page.get_by_text(archive.name).wait_for(timeout=timeout_ms)
            await page.get_by_label("Task name").fill(f"load test {k}")
        except Exception as exc:  # noqa: BLE001
            stats.errors.append(f"{who} before upload: {type(exc).__name__}: {str(exc)[:120]}")
            return
        finally:
            stats.ready += 1
        await start.wait()  # all uploaders click together
        t0 = time.perf_counter()
        await page.get_by_role("button", name="Embed and place").click()
        done = page.get_by_text("Nearest library tasks")
        while True:
            if await done.count() and await done.first.is_visible():
                break
            for text in await page.get_by_text(WAITING).all_inner_texts():
                m = WAITING.search(text)
                if m and (not record["positions"] or record["positions"][-1] != int(m[1])):
                    record["positions"].append(int(m[1]))
            if await page.locator('[data-testid="stAlertContentError"], [data-testid="stException"]').count():
                stats.errors.append(f"{who}: " + (await page.locator(
                    '[data-testid="stAlertContentError"], [data-testid="stException"]').first.inner_text())[:200])
                return
            if (time.perf_counter() - t0) * 1000 > timeout_ms:
                stats.errors.append(f"{who}: no result after {timeout_ms / 1000:.0f} s")
                return
            await asyncio.sleep(0.2)
        record["seconds"] = time.perf_counter() - t0
        caption = await page.get_by_text(re.compile(r"Embedding norm")).first.inner_text()
        m = re.search(r"behind (\d+) upload", caption)
        record["queue_ahead"] = int(m[1]) if m else 0
        record["shown"] = bool(await page.get_by_text(re.compile(rf"load test {k}: \d+ images")).count())
        await check_exceptions(page, stats, who)
    finally:
        await context.close()


async def run_load(url: str, *, browsers: int, uploaders: int, duration: float, archives: list[Path],
                   timeout_ms: int = 120_000, max_navs: int = 1_000, min_navs: int = 0) -> Stats:
    """Browse with ``browsers`` contexts and upload ``archives`` (one per uploader) at once.
    Each browsing session navigates at least ``min_navs`` times (one round is 5: the map and
    the four pages), then until ``duration`` s or ``max_navs``."""
    from playwright.async_api import async_playwright

    stats = Stats()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            deadline = time.monotonic() + duration
            start = asyncio.Event()
            jobs = [browse(browser, url, k, deadline, stats, timeout_ms, max_navs, min_navs)
                    for k in range(browsers)]
            ups = [upload(browser, url, k, archives[k % len(archives)], stats, timeout_ms, start)
                   for k in range(uploaders)]

            async def go():
                # let every uploader reach its button first, then start them together
                while stats.ready < uploaders:
                    await asyncio.sleep(0.1)
                start.set()

            stop = asyncio.Event()

            async def load():
                await asyncio.gather(*jobs, *ups, go())
                stop.set()

            await asyncio.gather(load(), probe_health(url, stats, stop))
        finally:
            await browser.close()
    return stats


def summary(stats: Stats) -> dict:
    times = sorted(t for _, t in stats.nav)
    later = list(stats.nav[i][1] for i in range(len(stats.nav)))
    for t in stats.first:
        later.remove(t)
    q = lambda f: times[min(int(f * len(times)), len(times) - 1)] if times else float("nan")
    return {"navigations": len(times), "p50_s": statistics.median(times) if times else None,
            "p95_s": q(0.95), "max_s": times[-1] if times else None,
            "per_page_p50_s": {p: statistics.median([t for n, t in stats.nav if n == p])
                               for p in sorted({n for n, _ in stats.nav})},
            "first_open_p50_s": statistics.median(stats.first) if stats.first else None,
            "after_first_p50_s": statistics.median(later) if later else None,
            "after_first_p95_s": sorted(later)[int(0.95 * len(later))] if later else None,
            "errors": len(stats.errors), "error_samples": sorted(set(stats.errors))[:10],
            "external_console_errors": len(stats.external),
            "external_samples": sorted(set(stats.external))[:5],
            "uploads": stats.uploads,
            "health_requests": len(stats.health),
            "health_p50_s": statistics.median(stats.health) if stats.health else None,
            "health_p95_s": sorted(stats.health)[int(0.95 * len(stats.health))] if stats.health else None,
            "health_max_s": max(stats.health) if stats.health else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=DEMO)
    ap.add_argument("--duration", type=float, default=120)
    ap.add_argument("--browsers", type=int, default=20)
    ap.add_argument("--uploaders", type=int, default=2)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=120, help="seconds one wait may take")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="load-test-") as tmp:
        archives = [fashion_zip(Path(tmp) / f"fashion-{k}.zip", args.images, offset=k * 50)
                    for k in range(args.uploaders)]
        log = ROOT / "artifacts" / "load_test_server.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with streamlit_server(args.db, log=log) as url:
            t0 = time.perf_counter()
            stats = asyncio.run(run_load(url, browsers=args.browsers, uploaders=args.uploaders,
                                         duration=args.duration, archives=archives,
                                         timeout_ms=int(args.timeout * 1000)))
            wall = time.perf_counter() - t0
    out = summary(stats)
    out["wall_s"] = wall
    print(json.dumps(out, indent=1, default=str))
    print(f"\n{out['navigations']} page navigations by {args.browsers} sessions in {wall:.0f} s: "
          f"p50 {out['p50_s']:.2f} s, p95 {out['p95_s']:.2f} s, max {out['max_s']:.2f} s; "
          f"errors {out['errors']}")
    if out["after_first_p50_s"] is not None:
        print(f"first open of each session: p50 {out['first_open_p50_s']:.2f} s; later "
              f"navigations: p50 {out['after_first_p50_s']:.2f} s, p95 {out['after_first_p95_s']:.2f} s")
    if out["health_requests"]:
        print(f"server health endpoint during the load: {out['health_requests']} requests, p50 "
              f"{1000 * out['health_p50_s']:.0f} ms, p95 {1000 * out['health_p95_s']:.0f} ms, "
              f"max {1000 * out['health_max_s']:.0f} ms")
    for u in stats.uploads:
        print(f"{u['who']}: {u['seconds'] and round(u['seconds'], 1)} s, queue positions seen "
              f"{u['positions']}, shown {u['shown']}")


if __name__ == "__main__":
    main()
