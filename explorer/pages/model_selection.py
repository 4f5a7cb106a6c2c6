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


def _interval(lo: pd.Series, hi: pd.Series, scale: float, fmt: str) -> list[str]:
    return ["" if pd.isna(a) or pd.isna(b) else f"[{scale * a:{fmt}}, {scale * b:{fmt}}]"
            for a, b in zip(lo, hi)]


if results.empty:
    st.info("No selector results in this library yet (table `selection_results`): run "
            f"`python -m precompute evaluate --db {lib.path}`.")
else:
    stale = lib.info.get("selection_stale")
    if stale:
        st.warning(f"This evaluation predates a change of experts ({'; '.join(stale)}): run "
                   f"`python -m precompute evaluate --db {lib.path}` to include it.")
    results = results.sort_values("relative_error_increase").reset_index(drop=True)
    table = pd.DataFrame({"selector": results["selector"],
                          "relative error increase (%)": 100 * results["relative_error_increase"]})
    if "relative_error_increase_std" in results:
        table["± std (%)"] = 100 * results["relative_error_increase_std"]
    if "relative_error_increase_lo" in results:
        table["95% interval (%)"] = _interval(results["relative_error_increase_lo"],
                                              results["relative_error_increase_hi"], 100, "+.1f")
    for col in ("top1", "top3"):
        if col in results:
            table[f"{col[:3]}-{col[3:]} (%)"] = 100 * results[col]
    # the field's metrics, where this file's evaluation recorded them
    if "regret" in results:
        table["regret (points)"] = 100 * results["regret"]
        if "regret_lo" in results:
            table["regret 95% interval"] = _interval(results["regret_lo"], results["regret_hi"],
                                                     100, ".2f")
    if "tau" in results:
        table["weighted τ"] = results["tau"]
        if "tau_lo" in results:
            table["τ 95% interval"] = _interval(results["tau_lo"], results["tau_hi"], 1, "+.3f")
        if "tau_std" in results:
            table["τ ± std"] = results["tau_std"]
    if "seconds" in results:
        table["seconds"] = results["seconds"]
    optimal = lib.info.get("optimal_error")
    if optimal is not None:
        st.caption(f"Mean test error of the best expert per task (the optimum): "
                   f"**{100 * float(optimal):.2f}%**.")
    formats = {c: st.column_config.NumberColumn(format="%.3f" if "τ" in c else "%.2f")
               for c in table.columns if c != "selector" and table[c].dtype.kind == "f"}
    st.dataframe(table, hide_index=True, key="table1", column_config=formats)
    selection = lib.info.get("selection") or {}
    if "tau" in results:
        boot = selection.get("bootstrap") or {}
        st.caption(
            "**Regret**: test error of the pick minus the best candidate's, in error points. "
            "**Weighted τ**: Kendall's τ between the selector's scores and the experts' test "
            "accuracy over each task's candidates (`scipy.stats.weightedtau`, hyperbolic "
            "weights: the best experts count most), averaged over tasks; +1 = the accuracy "
            "order, 0 = unrelated, as the LogME / SFDA benchmarks report it. Intervals: 95% "
            f"bootstrap over tasks ({boot.get('resamples', 'n/a')} resamples); ± std: over the "
            f"{selection.get('seeds', '')} evaluation seeds (fold splits and fits).")
    else:
        st.caption("This library was evaluated before regret, weighted τ and the bootstrap "
                   "intervals were recorded: run `python -m precompute evaluate` again to add "
                   "them (± std: over the evaluation seeds).")
    skipped = selection.get("unavailable") or {}
    if skipped:
        st.caption("Not evaluated in this library: " + "; ".join(
            f"**{name}** ({why})" for name, why in skipped.items()) + ".")
    paired = selection.get("paired") or {}
    if paired:
        st.markdown("**Does one selector beat another?** The mean over tasks of the difference "
                    "a − b, with its 95% paired bootstrap interval (the same task resamples for "
                    "both, so each task's own difficulty cancels). An interval clear of 0 "
                    "establishes the order even where the intervals above overlap.")
        rows = []
        for pair, d in paired.items():
            row = {"a − b": pair.replace(" - ", " − ")}
            for metric, label, scale, fmt, better in (
                    ("relative_error_increase", "rel. error increase (points of %)", 100, "+.1f", -1),
                    ("regret", "regret (points)", 100, "+.2f", -1), ("tau", "weighted τ", 1, "+.3f", 1)):
                mean, lo, hi = d[metric]
                row[label] = scale * mean
                row[f"{label} interval"] = _interval(pd.Series([lo]), pd.Series([hi]), scale, fmt)[0]
                row[f"a better in {label.split(' (')[0]}"] = (
                    "yes" if better * lo > 0 and better * hi > 0 else
                    "no: b better" if better * lo < 0 and better * hi < 0 else "not established")
            rows.append(row)
        paired_table = pd.DataFrame(rows)
        st.dataframe(paired_table, hide_index=True, key="paired", column_config={
            c: st.column_config.NumberColumn(format="%+.3f" if "τ" in c else "%+.2f")
            for c in paired_table.columns if paired_table[c].dtype.kind == "f"})
    ui.show_figure(figures.selection_bar_figure(results), "Selector error increase",
                   key="table1_fig", height=460 if "tau" in results else 420)

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
