"""Page parts shared by every page: the library in the sidebar, figures with their export
buttons, and the talk pack of all current figures."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import plotly.graph_objects as go
import streamlit as st

from precompute.errors import Task2VecError

from . import export, state, store


def library() -> store.Library:
    """The current library, or an explanatory message and the end of the page."""
    path = st.session_state.get("db") or state.start_library()
    try:
        lib = store.open_library(path)
    except Task2VecError as exc:
        st.error(str(exc))
        if Path(path).resolve() == state.DEFAULT_LIBRARY:
            st.info("The embedded demo library is built with `python -m precompute build demo "
                    "--db data/demo.duckdb`. Or open another library file in the sidebar, start "
                    "with `streamlit run app.py -- --db FILE`, or set TASK2VEC_DB.")
        st.stop()
    st.session_state["_library"] = lib
    return lib


def require_experts(lib: store.Library) -> None:
    """Stop the page with a note on how to add experts when the library has no expert errors."""
    if not lib.has_experts:
        hint = store.expert_hint(lib)
        st.info(f"{hint[0].upper()}{hint[1:]}.")
        st.stop()


def prefetch() -> None:
    """After the page is out: decode the library's embeddings in the background (imports torch
    and numba, a few seconds), so the first task card or upload does not wait for it."""
    lib = st.session_state.get("_library")
    if lib is not None:
        store.prefetch(lib)


def sidebar():
    """Library chooser; returns the slot for the figure pack, filled after the page ran."""
    with st.sidebar:
        current = st.session_state.get("db", "")  # both choosers follow the library chosen
        key = state.bind("db_input", current)
        typed = state.on_input("db_input", key, lambda path: state.set_library(path.strip()))
        st.text_input("Library file (DuckDB)", key=key, on_change=typed,
                      help="Another library built with `python -m precompute build`; opened "
                           "read-only, never changed.")
        found = _library_files()
        if len(found) > 1 or (found and current not in found):
            options = found if current in found else [current] + found
            key = state.bind("db_pick", current)
            st.selectbox("or pick one", options, key=key,
                         on_change=state.on_input("db_pick", key, state.set_library),
                         format_func=lambda p: Path(p).name)
        return st.empty()


def figure_pack_button(slot) -> None:
    """The one-click zip of every figure shown in this session (PNG + SVG, presentation style)."""
    figures = st.session_state.get("figures") or {}  # name -> builder (see show_figure)
    slot.download_button(
        f"Figure pack (zip, {len(figures)} figures)",
        data=lambda f=dict(figures): export.figure_pack({n: make() for n, make in f.items()}),
        file_name="task2vec-figures.zip", mime="application/zip", on_click="ignore",
        disabled=not figures, key="figure_pack", width="stretch", icon=":material/folder_zip:",
        help="PNG and SVG of every figure shown in this session, in presentation style")


def _library_files() -> list[str]:
    roots = {state.DEFAULT_LIBRARY.parent, Path.cwd()}
    files = sorted({str(p) for r in roots if r.is_dir() for p in r.glob("*.duckdb")})
    return files[:50]


def show_figure(fig: go.Figure, name: str, *, key: str, on_select=None, height: int | None = None,
                exported: Callable[[], go.Figure] | None = None, **kwargs):
    """Draw ``fig``, offer it as PNG and SVG, and put it in the session's figure pack.

    ``name`` titles the exported file; ``on_select`` (a callback) makes the chart selectable;
    ``exported`` builds what the downloads and the pack get instead of ``fig`` (a map with the
    selection the browser draws over ``fig``), only when one is downloaded. The session's
    ``figures`` maps each name to such a builder. Returns what ``st.plotly_chart`` returns.
    """
    exported = exported or (lambda: fig)
    st.session_state.setdefault("figures", {})[name] = exported
    args = dict(key=key, theme=None, config={"displaylogo": False, "toImageButtonOptions": {
        "format": "svg", "filename": export.file_stem(name)}}, **kwargs)
    if height:
        args["height"] = height
    if on_select is not None:
        args.update(on_select=on_select, selection_mode=("points", "box", "lasso"))
    event = st.plotly_chart(fig, **args)
    row = st.container(horizontal=True)
    for fmt in ("png", "svg"):
        row.download_button(fmt.upper(), data=lambda f=exported, t=fmt: export.to_image(f(), t),
                            file_name=f"{export.file_stem(name)}.{fmt}", mime=export.MIME[fmt],
                            on_click="ignore", key=f"{key}_{fmt}", icon=":material/download:",
                            help=f"{name} as {fmt.upper()} (presentation style)")
    return event
