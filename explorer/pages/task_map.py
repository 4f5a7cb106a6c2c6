"""Task map: the tasks in TASK2VEC space beside the same tasks in domain-embedding space.

A selection (click, box or lasso) on either map highlights the same tasks on both; one task
opens its card (thumbnails, metadata, nearest tasks, best experts). The selection exports as a
CSV of task ids.
"""
import pandas as pd
import streamlit as st

from explorer import figures, link, state, store, ui

lib = ui.library()
tasks = lib.tasks
colors = figures.category_colors(tasks["family"])
ALGO_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}

st.title("Task map")
st.caption(f"**{lib.name}**: {len(tasks):,} tasks in {len(lib.families)} families · probe "
           f"{lib.info.get('probe', '?')} · {lib.task_method} Fisher embedding, "
           f"{store.pstore.head_text(lib.info)}")

algorithms = lib.algorithms()
if not algorithms:
    st.warning("This library has no maps yet: they are computed at the end of "
               "`python -m precompute build` (option `--maps tsne,umap`).")
    st.stop()

c1, c2, c3 = st.columns([1, 2, 3])
algo = state.choice("Map", algorithms, "algo", "tsne", container=c1,
                    format_func=lambda a: ALGO_NAMES.get(a, a))
color_opts = figures.color_options(tasks)
color = state.choice("Colour by", list(color_opts), "color", "family", container=c2,
                     format_func=color_opts.get)
labels = {"": "(none)", **dict(zip(tasks.index, tasks["name"] + "  ·  " + tasks["family"]))}
state.choice("Open a task card", list(labels), "task", "", container=c3, format_func=labels.get,
             on_change=lambda: state.select_tasks([st.session_state["task"]]))


def on_select(chart_key: str) -> None:
    event = st.session_state.get(chart_key)
    points = (event or {}).get("selection", {}).get("points", [])
    ids = [(p.get("customdata") or [""])[0] for p in points]
    ids = [i for i in ids if i in tasks.index]
    if ids:
        state.select_tasks(ids)


@st.cache_resource(max_entries=8, show_spinner=False)
def map_figure(key: tuple, _tasks, _xy, _color: str, _args: dict):
    """A map as shown (no selection), built once per ``key`` (library file and mtime, space,
    map, colouring, upload) instead of on every click (about 20 ms at 1,500 tasks)."""
    return figures.task_map(_tasks, _xy, _color, **_args)


selected = [t for t in state.selected() if t in tasks.index]
upload = st.session_state.get("upload")
left, right = st.columns(2)
for col, space, label in ((left, "task", "Task space (TASK2VEC)"), (right, "domain", "Domain space")):
    with col:
        xy = lib.map_xy(space, algo)
        if xy.empty:
            st.info(f"No {ALGO_NAMES.get(algo, algo)} map of the {space} space in this library "
                    "(the domain embedding was not computed).")
            continue
        star = None
        if upload and upload.get("library") == lib.path and algo in upload["positions"].get(space, {}):
            star = (*upload["positions"][space][algo], upload["name"])
        args = dict(title=f"{label}, {ALGO_NAMES.get(algo, algo)}", family_colors=colors, upload=star)
        # Shown without the selection (the browser rings it, see explorer/link.py), so the same
        # figure serves every click; exported with it.
        fig = map_figure((lib.path, lib.mtime, space, algo, color, star), tasks, xy, color, args)
        ui.show_figure(fig, f"{label} {ALGO_NAMES.get(algo, algo)}", key=f"map_{space}",
                       on_select=lambda k=f"map_{space}": on_select(k), height=620,
                       exported=lambda xy=xy, args=args, sel=tuple(selected):
                       figures.task_map(tasks, xy, color, selected=list(sel), **args))
link.link_maps(selected, ["map_task", "map_domain"])

if selected:
    sel = tasks.loc[selected, ["name", "family", "size"]]
    a, b, c = st.columns([3, 1, 1])
    a.markdown(f"**{len(sel)} task{'s' if len(sel) > 1 else ''} selected**: "
               + ", ".join(sel["name"].head(8)) + (" ..." if len(sel) > 8 else ""))
    b.download_button("Selection (CSV)", sel.rename_axis("task_id").to_csv().encode(),
                      file_name="task2vec-selection.csv", mime="text/csv", on_click="ignore",
                      icon=":material/download:", key="selection_csv")
    if c.button("Clear selection", key="clear_selection"):
        st.session_state["selected"] = []
        st.session_state["task"] = ""
        st.rerun()

task = st.session_state.get("task")
if task and task in tasks.index:
    row = tasks.loc[task]
    with st.container(border=True):
        st.subheader(f"{row['name']}")
        st.caption(f"`{task}` · family **{row['family']}** · taxonomy "
                   + " › ".join(row["taxonomy"]))
        thumbs = store.thumbnails(lib, task)
        if thumbs:
            st.image([png for _, png in thumbs], caption=[label for label, _ in thumbs], width=96)
        info, near, best = st.columns([2, 3, 3])
        with info:
            st.markdown("**Task**")
            st.markdown(f"- {row['num_train']:,} training / {row['num_test']:,} test images\n"
                        f"- {len(row['classes'])} classes\n"
                        f"- embedding norm {row['norm']:.4g}\n"
                        "- " + store.diversity_text(lib, row["diversity"],
                                                           reason=row["diversity_reason"],
                                                           size=row["num_train"])
                        + (f"\n- best-expert error {100 * row['best_error']:.1f}%"
                           if pd.notna(row["best_error"]) else ""))
            counts = pd.DataFrame({"class": row["classes"], "images": row["class_counts"]})
            st.dataframe(counts, hide_index=True, height=min(35 * len(counts) + 38, 250),
                         key="card_classes")
        with near:
            st.markdown("**Nearest tasks** (symmetric TASK2VEC distance)")
            with st.spinner("Loading embeddings ..."):
                nearest = store.nearest_tasks(lib, task, k=10)
            st.table(nearest.reset_index()[["name", "family", "distance"]].round(4).set_index("name"))
        with best:
            st.markdown("**Best experts** (test error on this task)")
            if lib.has_experts:
                ranked = store.task_experts(lib, task).head(10)
                ranked["test error (%)"] = (100 * ranked.pop("test_error")).round(1)
                st.table(ranked.set_index("name"))
            else:
                hint = store.expert_hint(lib)
                st.info(f"{hint[0].upper()}{hint[1:]}.")
elif task:
    st.warning(f"Task `{task}` is not in this library.")
