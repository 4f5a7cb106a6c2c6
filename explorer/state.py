"""View state: a few well-named session-state keys, mirrored in the URL (``st.query_params``).

The page is the URL path (``st.navigation``); the rest is in the query string, so a copied
link reopens the same view::

    /map?db=data/demo.duckdb&color=level:1&algo=umap&task=glyphs/Latin

Keys: ``db`` (library file), ``color`` (map colouring), ``algo`` (tsne | umap), ``task``
(selected task id), ``branch`` and ``level`` (taxonomy page filter and colour-bar level),
``family`` (family filter of the difficulty and model-selection pages).
At the start of a session the URL fills the session state; afterwards the session state is the
truth and is written back to the URL on every run (switching pages clears the query string).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import streamlit as st

URL_KEYS = ("db", "color", "algo", "task", "branch", "level", "family")
DEFAULT_LIBRARY = Path(__file__).resolve().parent.parent / "data" / "demo.duckdb"
ENV_VAR = "TASK2VEC_DB"


def library_from_args(argv: Sequence[str]) -> str | None:
    """``--db FILE`` or ``--db=FILE`` from the script arguments (``streamlit run app.py -- --db F``)."""
    for i, arg in enumerate(argv):
        if arg == "--db" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--db="):
            return arg[len("--db="):]
    return None


def start_library() -> str:
    """The library chosen at start-up: ``--db``, else $TASK2VEC_DB, else the demo library."""
    return library_from_args(sys.argv[1:]) or os.environ.get(ENV_VAR) or str(DEFAULT_LIBRARY)


def canonical(path: str) -> str:
    """One spelling per library file (``data/x.duckdb`` and ``/abs/data/x.duckdb`` are the same
    library: switching between them must not drop the selection)."""
    return str(Path(path).expanduser().resolve()) if path else path


def init() -> None:
    """Fill the session state from the URL once per session (a shared link's view)."""
    if st.session_state.get("_initialised"):
        return
    for key in URL_KEYS:
        if key in st.query_params and key not in st.session_state:
            st.session_state[key] = st.query_params[key]
    st.session_state["db"] = canonical(st.session_state.get("db") or start_library())
    st.session_state["_initialised"] = True


def write_url() -> None:
    """Mirror the view keys into the URL (only those set)."""
    for key in URL_KEYS:
        value = st.session_state.get(key)
        if value in (None, ""):
            if key in st.query_params:
                del st.query_params[key]
        elif st.query_params.get(key) != str(value):
            st.query_params[key] = str(value)


def set_library(path: str) -> None:
    """Switch library: the selection and per-library choices no longer apply."""
    path = canonical(path)
    if path != st.session_state.get("db"):
        st.session_state["db"] = path
        for key in ("task", "selected", "branch", "family", "upload", "figures"):
            st.session_state.pop(key, None)


def select_tasks(ids: Sequence[str]) -> None:
    """Set the selection (highlighted on both maps); a single task also opens its card."""
    ids = list(dict.fromkeys(i for i in ids if i))
    st.session_state["selected"] = ids
    if ids:
        st.session_state["task"] = ids[0]


def selected() -> list[str]:
    sel = st.session_state.get("selected")
    if sel is None and st.session_state.get("task"):
        return [st.session_state["task"]]
    return list(sel or [])


def widget_key(name: str) -> str:
    """The key of the widget ``name`` now: ``w_<name>``, then ``w_<name>~N`` after the N-th
    change made outside it (see :func:`bind`)."""
    n = st.session_state.get(f"_generation_{name}", 0)
    return f"w_{name}~{n}" if n else f"w_{name}"


def bind(name: str, value) -> str:
    """Show ``value`` (kept elsewhere in the session state) in the widget ``name``; returns the
    key to create the widget with.

    When ``value`` was changed outside the widget (a click on the map opens another task card,
    the other library chooser picks another file), the widget gets a new key. The browser may
    still send the old widget's old value with the next rerun (seen with quick clicks on the
    map): under the same key that stale value would count as the user's input and undo the
    change; under a new key it belongs to a widget that is gone, and :func:`on_input` drops it.
    """
    if st.session_state.get(widget_key(name), value) != value:
        st.session_state[f"_generation_{name}"] = st.session_state.get(f"_generation_{name}", 0) + 1
    key = widget_key(name)
    st.session_state[key] = value
    return key


def on_input(name: str, key: str, then: Callable[[Any], None]) -> Callable[[], None]:
    """The ``on_change`` callback of the widget created with ``key`` by :func:`bind`: ``then``
    with its new value, unless the widget was replaced since (Streamlit still calls the
    callbacks of widgets that are gone)."""
    def callback() -> None:
        if key == widget_key(name):
            then(st.session_state[key])
    return callback


def choice(label: str, options: Sequence, key: str, default=None, *, container=st,
           format_func: Callable = str, on_change: Callable | None = None, **kwargs):
    """A selectbox whose value lives under ``key`` (so it survives page switches and goes into
    the URL), shown with :func:`bind`. An invalid stored value (e.g. from an old link) falls
    back to ``default``."""
    options = list(options)
    value = st.session_state.get(key, default)
    if value not in options:
        value = default if default in options else options[0] if options else None
    st.session_state[key] = value

    def chosen(new) -> None:
        st.session_state[key] = new
        if on_change:
            on_change()

    wkey = bind(key, value)
    return container.selectbox(label, options, key=wkey, format_func=format_func,
                               on_change=on_input(key, wkey, chosen), **kwargs)
