"""Figure export for papers and talks: PNG and SVG through kaleido and the local Chromium.

kaleido 1.x drives a Chromium through choreographer, which takes the browser from the
``BROWSER_PATH`` environment variable (set here to Debian's ``/usr/bin/chromium`` unless the
user set another); MathJax is disabled because its default is a CDN (no internet here). One
kaleido server per process is started on first use and reused (about 3 s to start, then
0.2 s per figure). Exported figures get the presentation size (16:9, 1600 x 900 px at scale 1,
PNG at scale 2) on a white background.
"""
from __future__ import annotations

import io
import os
import re
import threading
import zipfile
from typing import Mapping

import plotly.graph_objects as go

CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1600, 900
PNG_SCALE = 2
MIME = {"png": "image/png", "svg": "image/svg+xml"}

_lock = threading.Lock()
_server_started = False


def _ensure_server() -> None:
    global _server_started
    if _server_started:
        return
    os.environ.setdefault("BROWSER_PATH", CHROMIUM)
    if not os.path.exists(os.environ["BROWSER_PATH"]):
        from precompute.errors import Task2VecError

        raise Task2VecError(f"figure export needs Chromium at {os.environ['BROWSER_PATH']}: "
                            "install the Debian package `chromium` or set BROWSER_PATH")
    import kaleido

    kaleido.start_sync_server(mathjax=False, silence_warnings=True)
    _server_started = True


def presentation(fig: go.Figure, height: int | None = None) -> go.Figure:
    """A copy of ``fig`` laid out for a slide: fixed size, white background, no UI state."""
    out = go.Figure(fig)
    h = height or (fig.layout.height if fig.layout.height and fig.layout.height > HEIGHT else HEIGHT)
    out.update_layout(width=WIDTH, height=h, paper_bgcolor="white", plot_bgcolor="white",
                      dragmode=False, selections=[])
    return out


def to_image(fig: go.Figure, fmt: str) -> bytes:
    """PNG or SVG bytes of the figure in the presentation layout."""
    if fmt not in MIME:
        from precompute.errors import Task2VecError

        raise Task2VecError(f"unknown figure format {fmt!r}; use png or svg")
    slide = presentation(fig)
    import kaleido

    with _lock:  # one render at a time through the shared server
        _ensure_server()
        return kaleido.calc_fig_sync(slide, opts={"format": fmt, "width": slide.layout.width,
                                                  "height": slide.layout.height,
                                                  "scale": PNG_SCALE if fmt == "png" else 1})


def file_stem(title: str) -> str:
    """A safe file name from a figure title (``Task space (t-SNE)`` -> ``task-space-t-sne``)."""
    stem = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return stem[:60] or "figure"


def figure_pack(figures: Mapping[str, go.Figure]) -> bytes:
    """A zip with ``NAME.png`` and ``NAME.svg`` for every figure (the talk pack)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, fig in figures.items():
            for fmt in ("png", "svg"):
                zf.writestr(f"{file_stem(name)}.{fmt}", to_image(fig, fmt))
    return buf.getvalue()
