"""Difficulty (paper Fig. 2 right): the embedding norm against the best expert's test error.

The paper reads the L1 norm of the Fisher embedding as task difficulty: harder tasks (higher
best achievable error) put more information into the probe's weights.
"""
import streamlit as st
from scipy.stats import spearmanr

from explorer import figures, state, ui

lib = ui.library()
tasks = lib.tasks
colors = figures.category_colors(tasks["family"])

st.title("Difficulty")
st.caption("Embedding norm (L1 of the Fisher embedding) against the test error of the best "
           "expert on each task (paper Fig. 2 right).")

ui.require_experts(lib)

families = ["", *lib.families]
family = state.choice("Family", families, "family", "", format_func=lambda f: f or "all families")
df = tasks.dropna(subset=["norm", "best_error"])
if family:
    df = df[df["family"] == family]
if len(df) < 3:
    st.warning("Fewer than 3 tasks with a best-expert error here.")
    st.stop()

rho, p_value = spearmanr(df["norm"], df["best_error"])
stored = lib.info.get("norm_error_spearman")
m1, m2, m3 = st.columns(3)
m1.metric("Tasks", f"{len(df):,}")
m2.metric("Spearman ρ (norm vs error)", f"{rho:.3f}", help=f"p = {p_value:.2g}")
if stored is not None and not family:
    m3.metric("ρ recorded in the library", f"{float(stored):.3f}")

fig = figures.difficulty_figure(df, rho, family_colors=colors)
ui.show_figure(fig, f"Norm vs error {family or 'all'}", key="difficulty", height=620)
