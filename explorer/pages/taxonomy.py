"""Taxonomy (paper Fig. 2 left and centre): the task distance matrix in hierarchical-clustering
order with its dendrogram and a taxonomy colour bar; the neighbourhood curve against chance and
the rank correlation between TASK2VEC and taxonomic distance. Filter to a family or branch."""
import numpy as np
import streamlit as st

from explorer import figures, state, store, ui
from precompute import analysis

MAX_HEATMAP = 500  # tasks drawn in the matrix (2.25 M cells for 1,500 would choke a browser)
MAX_K = 50

lib = ui.library()
tasks = lib.tasks
colors = figures.category_colors(tasks["family"])

st.title("Taxonomy")
st.caption("Does TASK2VEC distance follow the tasks' taxonomy? Distances are the symmetric "
           "TASK2VEC distance (paper section 3.3); taxonomic distance counts the edges between "
           "two tasks in the taxonomy tree.")


def branch_options() -> dict[str, str]:
    """'' (all), 'family:F', and 'tax:a/b' for every inner taxonomy node with >= 3 tasks."""
    opts = {"": f"all tasks ({len(tasks)})"}
    for fam, n in tasks["family"].value_counts().sort_index().items():
        opts[f"family:{fam}"] = f"family {fam} ({n})"
    prefixes: dict[tuple, int] = {}
    for path in tasks["taxonomy"]:
        for depth in range(1, len(path)):
            prefixes[path[:depth]] = prefixes.get(path[:depth], 0) + 1
    for prefix in sorted(prefixes):
        if prefixes[prefix] >= 3 and len(prefix) >= 1:
            opts["tax:" + "/".join(prefix)] = f"branch {' › '.join(prefix)} ({prefixes[prefix]})"
    return opts


opts = branch_options()
c1, c2 = st.columns([3, 1])
branch = state.choice("Tasks", list(opts), "branch", "", container=c1, format_func=opts.get)
depth = lib.taxonomy_depth
levels = [str(i) for i in range(depth)]
level = int(state.choice("Colour bar: taxonomy level", levels, "level", "1" if depth > 1 else "0",
                         container=c2, format_func=lambda v: f"level {int(v) + 1}"))

if branch.startswith("family:"):
    keep = tasks.index[tasks["family"] == branch.split(":", 1)[1]]
elif branch.startswith("tax:"):
    prefix = tuple(branch.split(":", 1)[1].split("/"))
    keep = tasks.index[tasks["taxonomy"].map(lambda p: p[:len(prefix)] == prefix)]
else:
    keep = tasks.index
if len(keep) < 3:
    st.warning("Fewer than 3 tasks in this selection: choose a larger branch.")
    st.stop()

with st.spinner(f"Computing all-pairs distances of {len(tasks):,} tasks (once per library) ..."):
    dist = store.distance_matrix(lib)
ids = list(keep)
sub = dist.loc[ids, ids]
paths = list(tasks.loc[ids, "taxonomy"])
tax = analysis.taxonomy_matrix(paths)
rho, p_value = analysis.taxonomy_correlation(sub.to_numpy(), tax)
curve = analysis.neighbourhood_curve(sub.to_numpy(), tax, max_k=MAX_K)
domain_curve, rho_domain = None, None
if "domain" in lib.info.get("methods", []):
    dom = store.distance_matrix(lib, "domain").loc[ids, ids].to_numpy()
    domain_curve = analysis.neighbourhood_curve(dom, tax, max_k=MAX_K)
    rho_domain = analysis.taxonomy_correlation(dom, tax)[0]

m1, m2, m3 = st.columns(3)
m1.metric("Tasks", f"{len(ids):,}")
m2.metric("Spearman ρ (TASK2VEC vs taxonomy)", f"{rho:.3f}", help=f"p = {p_value:.2g}, over "
          f"{len(ids) * (len(ids) - 1) // 2:,} task pairs")
if rho_domain is not None:
    m3.metric("Spearman ρ (domain embedding)", f"{rho_domain:.3f}")

where = opts[branch].rsplit(" (", 1)[0]
shown = ids
if len(ids) > MAX_HEATMAP:
    shown = sorted(np.random.default_rng(0).choice(ids, MAX_HEATMAP, replace=False))
    st.caption(f"The matrix shows a random sample of {MAX_HEATMAP} of the {len(ids):,} tasks "
               "(seed 0); the correlation and the curve use all of them. Filter to a family or "
               "branch to see every task.")
left, right = st.columns([3, 2])
with left:
    heat = figures.distance_heatmap(dist.loc[shown, shown], tasks, level, family_colors=colors,
                                    title=f"Task distances, clustered: {where}")
    ui.show_figure(heat, f"Task distance matrix {where}", key="heatmap", height=900)
with right:
    curve_fig = figures.neighbourhood_figure(curve, rho, domain_curve=domain_curve,
                                             title=f"Neighbourhood vs chance (ρ = {rho:.2f})")
    ui.show_figure(curve_fig, f"Neighbourhood curve {where}", key="curve", height=520)
    k1 = curve["embedding"][0]
    st.markdown(f"The nearest task is on average **{k1:.2f}** taxonomy edges away "
                f"(chance: {curve['chance'][0]:.2f}, best possible: {curve['taxonomy'][0]:.2f}).")
