"""Figure builders: pure functions from data frames to Plotly figures.

Shared by the pages and by figure export, so what is exported is what is shown. One template
(white background, large fonts: readable from the back of a lecture hall) and one colour per
family everywhere (:func:`category_colors`). Scatter plots are SVG traces (``go.Scatter``, never
WebGL), so they export as vectors at any size; no figure prints text labels on points, and the
heatmap shows task names only while they fit, so exported figures have no overlapping labels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

FONT = "Helvetica, Arial, sans-serif"
# Okabe-Ito (colour-blind safe) first, then Tableau 10 and Dark 24 for libraries with many families.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000", "#4E79A7", "#F28E2B", "#59A14F", "#B07AA1", "#9C755F", "#EDC948",
           "#76B7B2", "#FF9DA7", "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF",
           "#222A2A", "#B68100", "#750D86"]
OTHER = "#BBBBBB"
MAX_CATEGORIES = 20  # more distinct values than this: the smallest go into "other"
SELECTED = "#111111"
UPLOAD = "#D62728"

pio.templates["task2vec"] = go.layout.Template(layout=go.Layout(
    font=dict(family=FONT, size=18, color="#222222"),
    title=dict(font=dict(size=22), x=0.02, xanchor="left"),
    paper_bgcolor="white", plot_bgcolor="white",
    colorway=PALETTE,
    xaxis=dict(showgrid=True, gridcolor="#EEEEEE", zeroline=False, linecolor="#444444",
               ticks="outside", showline=True, automargin=True, title=dict(standoff=12)),
    yaxis=dict(showgrid=True, gridcolor="#EEEEEE", zeroline=False, linecolor="#444444",
               ticks="outside", showline=True, automargin=True, title=dict(standoff=12)),
    legend=dict(bgcolor="rgba(255,255,255,0.85)", font=dict(size=16), itemsizing="constant"),
    hoverlabel=dict(font=dict(size=15)),
    margin=dict(l=70, r=30, t=70, b=60),
))
TEMPLATE = "task2vec"

COLOR_FIELDS = {"family": "family", "size": "size (training images)", "norm": "embedding norm",
                "diversity": "diversity coefficient", "best_error": "best-expert test error"}


def category_colors(values: Sequence[str]) -> dict[str, str]:
    """One fixed colour per distinct value, by sorted order: the same family gets the same
    colour on every page and in every export of one library."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(sorted(set(values)))}


def color_options(tasks: pd.DataFrame) -> dict[str, str]:
    """Colouring choices for a task table: key -> label (taxonomy levels as ``level:N``)."""
    depth = int(tasks["taxonomy"].map(len).max() or 0)
    opts = {"family": COLOR_FIELDS["family"]}
    for level in range(depth):
        opts[f"level:{level}"] = f"taxonomy level {level + 1}"
    opts["size"] = COLOR_FIELDS["size"]
    opts["norm"] = COLOR_FIELDS["norm"]
    if "diversity" in tasks and tasks["diversity"].notna().any():
        opts["diversity"] = COLOR_FIELDS["diversity"]
    if tasks["best_error"].notna().any():
        opts["best_error"] = COLOR_FIELDS["best_error"]
    return opts


def color_values(tasks: pd.DataFrame, key: str) -> pd.Series:
    """The value each task is coloured by (categorical for family / taxonomy levels)."""
    if key.startswith("level:"):
        level = int(key.split(":")[1])
        return tasks["taxonomy"].map(lambda p: p[level] if len(p) > level else "(none)")
    return tasks[key]


def _limit_categories(values: pd.Series) -> pd.Series:
    counts = values.value_counts()
    if len(counts) <= MAX_CATEGORIES:
        return values
    keep = set(counts.index[:MAX_CATEGORIES - 1])
    return values.where(values.isin(keep), "other")


def _hover(tasks: pd.DataFrame) -> np.ndarray:
    """customdata rows [task_id, name, family, size, classes] (object array [n, 5])."""
    classes = [", ".join(c[:6]) + (f", ... ({len(c)})" if len(c) > 6 else "") for c in tasks["classes"]]
    out = np.empty((len(tasks), 5), dtype=object)
    out[:, 0] = tasks.index.to_numpy(dtype=object)
    out[:, 1] = tasks["name"].to_numpy(dtype=object)
    out[:, 2] = tasks["family"].to_numpy(dtype=object)
    out[:, 3] = tasks["size"].to_numpy(dtype=object)
    out[:, 4] = classes
    return out


HOVER = ("<b>%{customdata[1]}</b><br>family: %{customdata[2]}<br>size: %{customdata[3]} images"
         "<br>classes: %{customdata[4]}<extra></extra>")


def task_map(tasks: pd.DataFrame, xy: pd.DataFrame, color: str = "family", *,
             title: str = "", selected: Sequence[str] = (), family_colors: dict | None = None,
             upload: tuple[float, float, str] | None = None) -> go.Figure:
    """Scatter of tasks on a 2-D map.

    Args:
        tasks: the library's task table (index task_id).
        xy: x, y indexed by task_id (tasks missing from it are not drawn).
        color: a key of :func:`color_options`.
        selected: task ids to ring (the rest of the map is dimmed); the same ids on both maps.
        family_colors: family -> colour (default :func:`category_colors` of the families).
        upload: (x, y, name) of an uploaded task, drawn as a red star.

    Every point carries its task id as ``customdata[0]`` (selection events read it); task
    traces have ``meta="tasks"`` (explorer/link.py rings the selection in the browser). Traces are
    built as plain dicts from numpy arrays and validated once: a new colouring rebuilds both
    maps, and 1,500 points through ``add_trace`` cost about 0.4 s each.
    """
    df = tasks.loc[tasks.index.intersection(xy.index, sort=False)]
    x = xy.loc[df.index, "x"].to_numpy(dtype=float)
    y = xy.loc[df.index, "y"].to_numpy(dtype=float)
    custom = _hover(df)
    ids = custom[:, 0]
    chosen = np.isin(ids, np.asarray(list(selected), dtype=object)) if len(selected) else None
    # Dim the map as a whole while a selection is ringed: a scalar opacity per trace redraws
    # much faster in the browser than one opacity per point.
    opacity = 0.3 if chosen is not None and chosen.any() else 0.85
    values = color_values(df, color)
    categorical = color == "family" or color.startswith("level:")
    marker_size = 11 if len(df) <= 400 else 8 if len(df) <= 1000 else 6
    edge = dict(width=0.5 if len(df) <= 1000 else 0, color="white")  # no outline strokes to draw on big maps
    traces = []

    def trace(mask, name, marker, **kw):
        m = {"size": marker_size, **marker}
        m.setdefault("opacity", opacity)
        # Plotly's own click selection would fade the other points: the selection is drawn
        # by the ring and the dimming instead, the same on both maps.
        keep = {"marker": {"opacity": m["opacity"]}}
        traces.append(dict(type="scatter", mode="markers", x=x[mask], y=y[mask], name=name,
                           meta=kw.pop("meta", "tasks"), selected=keep, unselected=keep,
                           customdata=custom[mask], hovertemplate=kw.pop("hovertemplate", HOVER),
                           marker=m, **kw))

    if categorical:
        values = _limit_categories(values)
        colors = family_colors if color == "family" and family_colors else category_colors(values)
        cats = values.to_numpy(dtype=object)
        for cat in sorted(set(cats), key=lambda v: (v == "other", v)):
            trace(cats == cat, str(cat), dict(color=colors.get(cat, OTHER), line=edge),
                  legendgroup=str(cat))
    else:
        numbers = values.to_numpy(dtype=float)
        known = ~np.isnan(numbers)
        if (~known).any():
            trace(~known, "no value", dict(color=OTHER))
        label = COLOR_FIELDS.get(color, color)
        trace(known, label, dict(color=numbers[known], colorscale="Viridis", line=edge,
                                 colorbar=dict(title=dict(text=label, side="right"), thickness=16)),
              hovertemplate=HOVER.replace("<extra>", f"<br>{label}: %{{marker.color:.4g}}<extra>"),
              showlegend=False)
    if chosen is not None and chosen.any():
        trace(chosen, "selected", dict(size=marker_size + 10, symbol="circle-open", color=SELECTED,
                                       line=dict(width=2.5), opacity=1.0), meta="ring")
    if upload is not None:
        traces.append(dict(
            type="scatter", x=[upload[0]], y=[upload[1]], mode="markers", name=f"upload: {upload[2]}",
            customdata=[["", upload[2], "upload", "", ""]], hovertemplate="<b>%{customdata[1]}</b>"
            "<br>(uploaded; placed by its nearest tasks)<extra></extra>",
            marker=dict(size=24, symbol="star", color=UPLOAD, line=dict(width=1.5, color="white"))))
    layout = dict(template=TEMPLATE, title=dict(text=title),
                  legend=dict(orientation="h", yanchor="top", y=-0.02, xanchor="left", x=0),
                  margin=dict(l=20, r=20, t=60, b=20), uirevision="map",
                  xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x", scaleratio=1))
    return go.Figure(dict(data=traces, layout=layout))


def distance_heatmap(dist: pd.DataFrame, tasks: pd.DataFrame, level: int, *, title: str = "",
                     family_colors: dict | None = None, max_labels: int = 40) -> go.Figure:
    """Paper Fig. 2 left: distance matrix in hierarchical-clustering order, its dendrogram on
    top and a colour bar of the taxonomy level ``level`` between them.

    Args:
        dist: square symmetric distance matrix indexed by task_id on both axes.
        tasks: task table (index task_id) for names and taxonomy.
        level: taxonomy level (0 = root) whose branch colours the bar.
        max_labels: task names are printed on the axes only up to this many tasks.
    """
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    ids = list(dist.index)
    d = dist.to_numpy(dtype=np.float64)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    z = linkage(squareform(d, checks=False), method="average")
    tree = dendrogram(z, no_plot=True)
    order = tree["leaves"]
    ordered = [ids[i] for i in order]
    n = len(ids)

    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.005,
                        row_heights=[0.16, 0.035, 0.805])
    # Dendrogram: scipy puts leaf i at x = 10 i + 5.
    xs, ys = [], []
    for ic, dc in zip(tree["icoord"], tree["dcoord"]):
        xs += [(v - 5) / 10 for v in ic] + [None]
        ys += list(dc) + [None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#555555", width=1),
                             hoverinfo="skip", showlegend=False), row=1, col=1)

    branch = tasks.loc[ordered, "taxonomy"].map(lambda p: p[level] if len(p) > level else "(none)")
    branch = _limit_categories(branch)
    colors = family_colors if level == 0 and family_colors else category_colors(branch)
    cats = sorted(branch.unique(), key=lambda v: (v == "other", v))
    code = {c: i for i, c in enumerate(cats)}
    k = max(len(cats), 1)
    scale = []
    for i, c in enumerate(cats):  # a stepped colour scale: one flat band per category
        col = colors.get(c, OTHER)
        scale += [[i / k, col], [(i + 1) / k, col]]
    fig.add_trace(go.Heatmap(
        z=[[code[b] for b in branch]], x=list(range(n)), zmin=-0.5, zmax=k - 0.5, colorscale=scale,
        showscale=False, customdata=[[[b, tasks.at[t, "name"]] for b, t in zip(branch, ordered)]],
        hovertemplate="%{customdata[1]}<br>branch: %{customdata[0]}<extra></extra>"), row=2, col=1)
    for c in cats:  # legend entries for the colour bar
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=str(c), showlegend=True,
                                 marker=dict(size=14, symbol="square", color=colors.get(c, OTHER))),
                      row=1, col=1)

    names = tasks.loc[ordered, "name"].tolist()
    m = d[np.ix_(order, order)]
    fig.add_trace(go.Heatmap(
        z=m, x=list(range(n)), y=list(range(n)), colorscale="Viridis_r",
        customdata=np.array([[[names[i], names[j]] for j in range(n)] for i in range(n)], dtype=object)
        if n <= 600 else None,
        hovertemplate=("%{customdata[0]} - %{customdata[1]}<br>distance %{z:.3f}<extra></extra>"
                       if n <= 600 else "distance %{z:.3f}<extra></extra>"),
        # beside the matrix, under the branch legend (which stands at the top right): a legend
        # above the figure wraps into the title once a level has more than a few branches
        colorbar=dict(title=dict(text="distance", side="right"), thickness=16, len=0.28,
                      lenmode="fraction", x=1.02, xanchor="left", y=0, yanchor="bottom")),
        row=3, col=1)
    show_labels = n <= max_labels
    fig.update_xaxes(visible=False, row=1, col=1)
    fig.update_yaxes(visible=False, row=1, col=1)
    fig.update_xaxes(visible=False, row=2, col=1)
    fig.update_yaxes(visible=False, row=2, col=1)
    fig.update_xaxes(showticklabels=show_labels, tickvals=list(range(n)) if show_labels else None,
                     ticktext=names if show_labels else None, tickangle=-60, tickfont=dict(size=12),
                     showgrid=False, ticks="", row=3, col=1)
    fig.update_yaxes(showticklabels=show_labels, tickvals=list(range(n)) if show_labels else None,
                     ticktext=names if show_labels else None, tickfont=dict(size=12),
                     autorange="reversed", showgrid=False, ticks="", row=3, col=1)
    fig.update_layout(template=TEMPLATE, title=title, height=900,
                      legend=dict(orientation="v", x=1.02, xanchor="left", y=1.0, yanchor="top",
                                  font=dict(size=13), tracegroupgap=0,
                                  title=dict(text=f"level {level + 1}", font=dict(size=14))),
                      margin=dict(t=80))
    return fig


def neighbourhood_figure(curve: dict, rho: float, *, domain_curve: dict | None = None,
                         title: str = "") -> go.Figure:
    """Paper Fig. 2 centre: mean taxonomic distance of the k nearest tasks, against chance and
    the taxonomy itself (the best possible)."""
    k = curve["k"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=k, y=curve["embedding"], name="TASK2VEC", mode="lines",
                             line=dict(width=4, color=PALETTE[0])))
    if domain_curve is not None:
        fig.add_trace(go.Scatter(x=k, y=domain_curve["embedding"], name="domain embedding",
                                 mode="lines", line=dict(width=3, color=PALETTE[1], dash="dot")))
    fig.add_trace(go.Scatter(x=k, y=curve["taxonomy"], name="taxonomy (best possible)", mode="lines",
                             line=dict(width=3, color=PALETTE[2], dash="dash")))
    fig.add_trace(go.Scatter(x=k, y=curve["chance"], name="chance", mode="lines",
                             line=dict(width=3, color="#777777", dash="longdash")))
    fig.update_layout(template=TEMPLATE, title=title or f"Neighbourhood vs chance (Spearman ρ = {rho:.2f})",
                      xaxis_title="k nearest tasks", yaxis_title="mean taxonomic distance",
                      legend=dict(x=0.98, xanchor="right", y=0.02, yanchor="bottom"))
    return fig


def difficulty_figure(tasks: pd.DataFrame, rho: float, *, family_colors: dict | None = None,
                      title: str = "") -> go.Figure:
    """Paper Fig. 2 right: embedding norm against the best expert's test error."""
    df = tasks.dropna(subset=["norm", "best_error"])
    colors = family_colors or category_colors(df["family"])
    fig = go.Figure()
    for fam in sorted(df["family"].unique()):
        part = df[df.family == fam]
        fig.add_trace(go.Scatter(x=part["norm"], y=100 * part["best_error"], mode="markers", name=fam,
                                 customdata=_hover(part), marker=dict(size=10, color=colors.get(fam, OTHER),
                                                                      opacity=0.85),
                                 hovertemplate=HOVER.replace("<extra>", "<br>norm %{x:.4g}, error %{y:.1f}%<extra>")))
    if len(df) >= 2:  # least-squares line, to show the trend
        slope, icpt = np.polyfit(df["norm"], 100 * df["best_error"], 1)
        xs = np.array([df["norm"].min(), df["norm"].max()])
        fig.add_trace(go.Scatter(x=xs, y=slope * xs + icpt, mode="lines", name="linear fit",
                                 line=dict(color="#444444", width=2, dash="dash"), hoverinfo="skip"))
    fig.update_layout(template=TEMPLATE,
                      title=title or f"Embedding norm vs best-expert error (Spearman ρ = {rho:.2f})",
                      xaxis_title="embedding norm (L1)", yaxis_title="best-expert test error (%)")
    return fig


# the bars' panels: result column, axis title, scale to the unit shown, hover format
SELECTION_PANELS = (("relative_error_increase", "relative error increase (%)", 100.0, "+.1f", "%"),
                    ("regret", "regret (error points)", 100.0, ".2f", ""),
                    ("tau", "weighted Kendall τ", 1.0, "+.3f", ""))


def selection_bar_figure(results: pd.DataFrame, *, title: str = "") -> go.Figure:
    """Table 1 as bars per selector, best (least relative error increase) on top: the relative
    error increase over the best expert and, where the evaluation recorded them, the regret
    and the weighted Kendall tau, one panel each. Error bars: the 95 % bootstrap interval over
    tasks (``<metric>_lo`` / ``_hi``); a file evaluated before the intervals shows one panel
    with the values and the spread over seeds printed at the bars (with intervals the values
    are in the hover and the table: printed text would sit on the error bars)."""
    df = results.sort_values("relative_error_increase").reset_index(drop=True)
    panels = [p for p in SELECTION_PANELS if p[0] in df and df[p[0]].notna().any()]
    intervals = all(f"{p[0]}_lo" in df for p in panels)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(df))]
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.05)
    for col, (key, label, scale, fmt, unit) in enumerate(panels, start=1):
        v = scale * df[key].astype(float)
        bar = dict(x=v, y=df["selector"], orientation="h", marker_color=colors, name=label,
                   showlegend=False)
        if intervals:
            lo, hi = scale * df[f"{key}_lo"].astype(float), scale * df[f"{key}_hi"].astype(float)
            bar["error_x"] = dict(type="data", symmetric=False, array=(hi - v).clip(lower=0),
                                  arrayminus=(v - lo).clip(lower=0), thickness=2, width=6,
                                  color="#333333")
            bar["customdata"] = np.stack([lo, hi], axis=1)
            bar["hovertemplate"] = (f"%{{y}}: %{{x:{fmt}}}{unit} (95%: %{{customdata[0]:{fmt}}} "
                                    f"to %{{customdata[1]:{fmt}}}{unit})<extra></extra>")
        else:  # the spread as text, not whiskers: a whisker would run through the text
            std = scale * df[f"{key}_std"] if f"{key}_std" in df else None
            bar["text"] = [f"{x:{fmt}}{unit}" + ("" if std is None or pd.isna(d) else f" ± {d:.1f}")
                           for x, d in zip(v, v * np.nan if std is None else std)]
            bar["textposition"] = "outside"
            bar["cliponaxis"] = False
            bar["hovertemplate"] = f"%{{y}}: %{{x:{fmt}}}{unit}<extra></extra>"
        fig.add_trace(go.Bar(**bar), row=1, col=col)
        fig.update_xaxes(title_text=label, row=1, col=col, zeroline=key == "tau",
                         zerolinecolor="#444444", zerolinewidth=1)
    fig.update_yaxes(title=None, showgrid=False, autorange="reversed")
    default = ("Selectors on held-out tasks (95% intervals over tasks)" if intervals
               else "Error increase over the best expert")
    fig.update_layout(template=TEMPLATE, title=title or default, showlegend=False, bargap=0.25,
                      margin=dict(l=40, r=90 if not intervals else 30, t=70, b=60))
    return fig


SELECTOR_SYMBOLS = ["diamond", "triangle-up", "square", "cross", "x", "triangle-down", "pentagon",
                    "star", "hexagon", "triangle-left", "circle-x"]


def expert_spread_figure(perf: pd.DataFrame, picks: pd.DataFrame, task_names: pd.Series, *,
                         title: str = "") -> go.Figure:
    """Paper Fig. 3: per task, the test error of every expert (grey), each selector's pick marked.

    Args:
        perf: task_id, expert_id, test_error (one row per expert and task).
        picks: selector, task_id, expert_id (each selector's first choice per task).
        task_names: task_id -> name, in the order the tasks are drawn.
    """
    order = list(task_names.index)
    pos = {t: i for i, t in enumerate(order)}
    perf = perf[perf.task_id.isin(pos)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=perf.task_id.map(pos), y=100 * perf.test_error, mode="markers", name="experts",
        marker=dict(size=7, color="#BBBBBB"), customdata=perf[["name"]].to_numpy() if "name" in perf else None,
        hovertemplate="%{customdata[0]}: %{y:.1f}%<extra></extra>"))
    best = perf.loc[perf.groupby("task_id").test_error.idxmin()]
    fig.add_trace(go.Scatter(x=best.task_id.map(pos), y=100 * best.test_error, mode="markers",
                             name="best expert", marker=dict(size=12, color="#000000", symbol="line-ew-open",
                                                             line=dict(width=3))))
    err = perf.set_index(["task_id", "expert_id"]).test_error
    for i, (selector, part) in enumerate(picks[picks.task_id.isin(pos)].groupby("selector", sort=True)):
        y = [100 * err.get((t, e), np.nan) for t, e in zip(part.task_id, part.expert_id)]
        fig.add_trace(go.Scatter(
            x=part.task_id.map(pos), y=y, mode="markers", name=str(selector),
            marker=dict(size=13, symbol=SELECTOR_SYMBOLS[i % len(SELECTOR_SYMBOLS)],
                        color=PALETTE[i % len(PALETTE)], line=dict(width=1, color="white")),
            hovertemplate=f"{selector}: %{{y:.1f}}%<extra></extra>"))
    n = len(order)
    # the legend stands beside the plot: a row above it wraps into the title with 11 selectors
    fig.update_layout(template=TEMPLATE, title=title or "Expert errors per task, with each selector's pick",
                      yaxis_title="test error (%)",
                      legend=dict(orientation="v", yanchor="top", y=1.0, x=1.01, xanchor="left"),
                      margin=dict(t=70))
    fig.update_xaxes(tickvals=list(range(n)), ticktext=list(task_names.values), tickangle=-50,
                     tickfont=dict(size=14 if n <= 20 else 11), showgrid=False, range=[-0.7, n - 0.3])
    return fig
