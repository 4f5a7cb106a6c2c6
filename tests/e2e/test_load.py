"""A small, bounded load test in the real app: 6 browsing sessions and 2 uploads at the same time
on the test library (benchmarks/load_test.py is the full-size version). No speed assertion:
every page must render without errors, both uploads must finish and show their results, and
one of them must have waited in the upload queue."""
from __future__ import annotations

import asyncio
import sys

import pytest

from e2e.server import ROOT, streamlit_server

sys.path.insert(0, str(ROOT / "benchmarks"))
from load_test import PAGES, fashion_zip, run_load  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_browsing_and_two_uploads_at_once(app_library, tmp_path):
    archives = [fashion_zip(tmp_path / f"fashion-{k}.zip", 200, offset=k * 50) for k in range(2)]
    log = ROOT / "artifacts" / "e2e"
    log.mkdir(parents=True, exist_ok=True)
    with streamlit_server(app_library, log=log / "load-server.log") as url:
        stats = asyncio.run(run_load(url, browsers=6, uploaders=2, duration=10, archives=archives,
                                     timeout_ms=180_000, max_navs=8, min_navs=5))
    assert stats.errors == []  # includes every health probe the server did not answer
    assert len(stats.health) >= 5  # the server answered its health probe all along
    assert stats.pages_seen == {title for _, title in PAGES}
    assert len(stats.nav) >= 6 * 5  # every session: the map and the four pages
    assert [u["shown"] for u in stats.uploads] == [True, True]
    assert all(u["seconds"] for u in stats.uploads)
    # both clicked together: one embedded first, the other waited behind it
    assert sorted(u["queue_ahead"] for u in stats.uploads) == [0, 1]
