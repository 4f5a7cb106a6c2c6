"""No legend, title, colour bar or label overlaps another, in any figure a page builds.

Every figure is built the way its page builds it, from the shipped library (data/demo.duckdb,
all its tasks) and from the small test library (few tasks: the heatmap prints task names),
then drawn by plotly.js in headless Chromium at the size the page gives it (columns of a
1,280-px and a 1,600-px window) and at the export size (explorer.export.presentation). The
test reads the rendered bounding boxes of the title, the legend, each colour bar, the axis
titles and the tick labels, and checks that no two of them intersect (tick labels of one axis
may touch each other: rotated labels' boxes always do) and that none is cut off by the edge.
"""
from __future__ import annotations

import itertools

import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs
from playwright.sync_api import sync_playwright

from e2e.server import CHROMIUM, CHROMIUM_ARGS, ROOT
from explorer import export, figures, store
from precompute import analysis

pytestmark = pytest.mark.browser
SHIPPED = ROOT / "data" / "demo.duckdb"
# main-area widths of the pages' columns: a 1,280-px window (sidebar open) and a 1,600-px one
PAGE_WIDTHS = {"full": (960, 1280), "half": (460, 600), "three-fifths": (560, 730),
               "two-fifths": (370, 480)}

MEASURE = """() => {
  const out = [];
  const add = (kind, el) => {
    const r = el.getBoundingClientRect();
    if (r.width > 0.5 && r.height > 0.5)
      out.push({kind, x0: r.left, y0: r.top, x1: r.right, y1: r.bottom,
                text: (el.textContent || '').trim().slice(0, 40)});
  };
  document.querySelectorAll('text.gtitle').forEach(e => add('title', e));
  document.querySelectorAll('g.legend > rect.bg').forEach(e => add('legend', e));
  document.querySelectorAll('g.colorbar').forEach(e => add('colour bar', e));
  document.querySelectorAll('text[class$="title"]').forEach(e => {
    const c = e.getAttribute('class');
    if (c !== 'gtitle' && !e.closest('g.colorbar') && !e.closest('g.legend')) add('axis title ' + c, e);
  });
  document.querySelectorAll('g[class$="tick"] > text').forEach(e => {
    if (!e.closest('g.colorbar')) add('ticks ' + e.parentNode.getAttribute('class'), e);
  });
  const svg = document.querySelector('#fig .main-svg').getBoundingClientRect();
  return {boxes: out, left: svg.left, top: svg.top, width: svg.width, height: svg.height};
}"""


def page_figures(db) -> list[tuple[str, go.Figure, str, int]]:
    """(name, figure, page column, page height) for every figure the pages build on ``db``,
    with the arguments the pages use (task_map.py, taxonomy.py, difficulty.py,
    model_selection.py, upload.py)."""
    lib = store.open_library(db)
    tasks = lib.tasks
    colors = figures.category_colors(tasks["family"])
    out = []
    algo = lib.algorithms()[0]
    some = list(tasks.index[:5])
    for space in ("task", "domain"):
        xy = lib.map_xy(space, algo)
        for color in figures.color_options(tasks):
            out.append((f"map {space} {color}", figures.task_map(
                tasks, xy, color, title=f"{space} space, {algo}", family_colors=colors), "half", 620))
        x, y = xy.iloc[0]
        out.append((f"upload map {space}", figures.task_map(
            tasks, xy, "family", title=f"{space} space, {algo}", selected=some,
            family_colors=colors, upload=(x, y, "my upload")), "half", 560))
    dist = store.distance_matrix(lib)
    depth = lib.taxonomy_depth
    # the page's default (level 2) and the deepest level (the most branches in the legend)
    for level in sorted({min(1, depth - 1), depth - 1}):
        out.append((f"heatmap level {level + 1}", figures.distance_heatmap(
            dist, tasks, level, family_colors=colors, title="Task distances, clustered: all tasks"),
            "three-fifths", 900))
    family = tasks["family"].value_counts().index[-1]  # the smallest family: names printed
    ids = list(tasks.index[tasks["family"] == family])[:40]
    out.append(("heatmap one family", figures.distance_heatmap(
        dist.loc[ids, ids], tasks, lib.taxonomy_depth - 1, family_colors=colors,
        title=f"Task distances, clustered: family {family}"), "three-fifths", 900))
    tax = analysis.taxonomy_matrix(list(tasks["taxonomy"]))
    curve = analysis.neighbourhood_curve(dist.to_numpy(), tax, max_k=50)
    rho = analysis.taxonomy_correlation(dist.to_numpy(), tax)[0]
    out.append(("neighbourhood", figures.neighbourhood_figure(
        curve, rho, domain_curve=curve, title=f"Neighbourhood vs chance (ρ = {rho:.2f})"),
        "two-fifths", 520))
    if lib.has_experts:
        df = tasks.dropna(subset=["norm", "best_error"])
        out.append(("difficulty", figures.difficulty_figure(df, 0.38, family_colors=colors),
                    "full", 620))
        results = store.selection_results(lib)
        if not results.empty:
            out.append(("selection bars", figures.selection_bar_figure(results), "full",
                        460 if "tau" in results else 420))
        order = tasks["best_error"].dropna().sort_values().iloc[:30]
        out.append(("expert spread", figures.expert_spread_figure(
            store.performance(lib), store.selector_picks(lib), tasks.loc[order.index, "name"]),
            "full", 620))
    return out


def overlaps(m: dict) -> list[str]:
    """Pairs of boxes that intersect, and boxes cut off by the figure's edge."""
    boxes, problems = m["boxes"], []
    for b in boxes:
        if (b["x0"] < m["left"] - 1 or b["y0"] < m["top"] - 1
                or b["x1"] > m["left"] + m["width"] + 1 or b["y1"] > m["top"] + m["height"] + 1):
            problems.append(f"{b['kind']} {b['text']!r} is cut off by the figure's edge")
    for a, b in itertools.combinations(boxes, 2):
        if a["kind"] == b["kind"] and a["kind"].startswith("ticks"):
            continue
        w = min(a["x1"], b["x1"]) - max(a["x0"], b["x0"])
        h = min(a["y1"], b["y1"]) - max(a["y0"], b["y0"])
        if w > 1 and h > 1:
            problems.append(f"{a['kind']} {a['text']!r} overlaps {b['kind']} {b['text']!r}")
    return problems


@pytest.fixture(scope="module")
def plotly_page():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1700, "height": 1200})
        page.set_content(f"<html><head><meta charset='utf-8'><script>{get_plotlyjs()}</script>"
                         "</head><body style='margin:0'><div id='fig'></div></body></html>")
        yield page
        browser.close()


def draw(page, fig: go.Figure, width: int, height: int) -> dict:
    page.evaluate("([spec, w, h]) => { spec = JSON.parse(spec); "
                  "return Plotly.newPlot('fig', spec.data, {...spec.layout, width: w, height: h}, "
                  "{staticPlot: true}); }", [fig.to_json(), width, height])
    return page.evaluate(MEASURE)


def check_library(page, db) -> list[str]:
    problems = []
    for name, fig, column, height in page_figures(db):
        sizes = [(w, height) for w in PAGE_WIDTHS[column]]
        slide = export.presentation(fig)
        sizes.append((slide.layout.width, slide.layout.height))
        for width, h in sizes:
            m = draw(page, slide if (width, h) == sizes[-1] else fig, width, h)
            assert m["boxes"], f"{name}: nothing measured"
            problems += [f"{name} at {width}x{h}: {p}" for p in overlaps(m)]
    return problems


def test_no_overlap_in_the_shipped_librarys_figures(plotly_page):
    problems = check_library(plotly_page, SHIPPED)
    assert not problems, "\n".join(problems)


def test_no_overlap_in_a_small_librarys_figures(plotly_page, app_library_experts):
    problems = check_library(plotly_page, app_library_experts)
    assert not problems, "\n".join(problems)


def test_the_overlap_check_finds_a_legend_over_a_title(plotly_page):
    """The check itself: a legend laid over the title is reported, the same figure with the
    legend beside the plot is not."""
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], name="a long legend entry"))
    fig.update_layout(title=dict(text="A title where the legend sits", x=0.02, y=0.97),
                      showlegend=True, legend=dict(x=0.02, y=1.02, yanchor="bottom"),
                      margin=dict(t=40))
    assert any("overlaps" in p and "title" in p for p in overlaps(draw(plotly_page, fig, 800, 500)))
    fig.update_layout(legend=dict(x=1.02, y=1.0, yanchor="top"), margin=dict(t=80))
    assert overlaps(draw(plotly_page, fig, 800, 500)) == []
