"""Model selection (paper Table 1 and Fig. 3): how much worse than the best expert is the expert
each selector picks, and per task the spread of expert errors with each selector's pick."""
import pandas as pd
import streamlit as st

from explorer import figures, state, store, ui

MAX_TASKS = 30  # tasks per spread figure; more would not leave room for their names

lib = ui.library()
tasks = lib.tasks

st.title("Model selection")
st.caption("Which expert (feature extractor) to use on a task, chosen from the task's embedding "
           "alone, compared with training every expert on it (paper section 4.2).")

ui.require_experts(lib)

results = store.selection_results(lib)
st.subheader("Error increase over the best expert (Table 1)")
if results.empty:
    st.info("No selector results in this library yet (table `selection_results`): run "
            f"`python -m precompute evaluate --db {lib.path}`.")
else:
    table = pd.DataFrame({"selector": results["selector"],
                          "relative error increase (%)": 100 * results["relative_error_increase"]})
    if "relative_error_increase_std" in results:
        table["± std (%)"] = 100 * results["relative_error_increase_std"]
    for col in ("top1", "top3"):
        if col in results:
            table[f"{col[:3]}-{col[3:]} (%)"] = 100 * results[col]
    if "seconds" in results:
        table["seconds"] = results["seconds"]
    table = table.sort_values("relative error increase (%)").reset_index(drop=True)
    optimal = lib.info.get("optimal_error")
    if optimal is not None:
        st.caption(f"Mean test error of the best expert per task (the optimum): "
                   f"**{100 * float(optimal):.2f}%**.")
    left, right = st.columns([1, 1])
    left.dataframe(table, hide_index=True, key="table1",
                   column_config={c: st.column_config.NumberColumn(format="%.2f")
                                  for c in table.columns if c != "selector"})
    with right:
        ui.show_figure(figures.selection_bar_figure(results), "Selector error increase",
                       key="table1_fig", height=420)

st.subheader("Expert errors per task (Fig. 3)")
perf = store.performance(lib)
picks = store.selector_picks(lib)
families = ["", *lib.families]
family = state.choice("Family", families, "family", "", format_func=lambda f: f or "all families")
best = tasks["best_error"].dropna()
if family:
    best = best[tasks.loc[best.index, "family"] == family]
if best.empty:
    st.info("No expert errors for these tasks.")
    st.stop()
order = best.sort_values()
if len(order) > MAX_TASKS:
    start = st.slider("First task (tasks ordered by best-expert error)", 0, len(order) - MAX_TASKS,
                      0, step=MAX_TASKS // 2, key="spread_start")
    order = order.iloc[start:start + MAX_TASKS]
    st.caption(f"Showing {MAX_TASKS} of {len(best)} tasks.")
names = tasks.loc[order.index, "name"]
fig = figures.expert_spread_figure(perf, picks, names)
ui.show_figure(fig, f"Expert errors per task {family or 'all'}", key="spread", height=620)
if picks.empty:
    st.caption("No selector rankings in this library yet: only the experts' errors are shown.")
