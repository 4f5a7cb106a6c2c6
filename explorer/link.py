"""Linked selection on the task maps, drawn in the browser (see assets/link_maps.js).

A selection used to rebuild both maps on the server and redraw them in the browser: at 1,500
tasks that is two 1,500-point SVG redraws per click. Now the maps do not depend on the
selection; this component passes the selected ids to a small script in the page that rings
them (an SVG overlay) and dims the rest (CSS opacity) on both maps, without touching their data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import streamlit as st

_JS = (Path(__file__).resolve().parent / "assets" / "link_maps.js").read_text()
_component = st.components.v2.component("task2vec_link_maps", js=_JS)


def link_maps(selected: Sequence[str], charts: Sequence[str], *, key: str = "link_maps") -> None:
    """Ring ``selected`` (task ids) on the plotly charts with keys ``charts`` (maps made by
    :func:`explorer.figures.task_map` without a selection) and dim their other tasks."""
    _component(data={"ids": list(selected), "charts": list(charts)}, key=key, height=0)
