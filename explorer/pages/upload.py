"""Upload a task: embed it like the library's tasks, place it on the maps, list its nearest
tasks and the experts ranked for it. The library file is never changed; the uploaded files live
in a private temporary folder that is deleted when the embedding is done."""
import shutil
import tempfile
from pathlib import Path

import streamlit as st

from explorer import figures, jobs, store, ui
from explorer import upload as up
from precompute.errors import Task2VecError

lib = ui.library()
tasks = lib.tasks
colors = figures.category_colors(tasks["family"])
ALGO_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


@st.cache_resource(show_spinner=False)
def probe_network(name: str):
    """The library's probe, created once per process (embed() copies it, never changes it)."""
    from precompute.probes import create

    return create(name)


@st.cache_resource(show_spinner=False)
def job_queue() -> jobs.JobQueue:
    """One queue per server process, shared by all sessions: one embedding at a time."""
    return jobs.JobQueue()


def _waited(result: dict, before: str = "", after: str = "") -> str:
    """'waited 3.2 s behind 1 upload(s)' if the upload queued, else ''."""
    queued = result.get("queue") or {}
    if not queued.get("max_ahead"):
        return ""
    return f"{before}waited {queued['waited']:.1f} s behind {queued['max_ahead']} upload(s){after}"


st.title("Upload a task")
st.caption(f"Embedded with the library's settings: probe **{lib.info.get('probe')}**, "
           f"{lib.info.get('input_size')} px, {', '.join(up.embed_methods_for(lib))}, seed "
           f"{lib.info.get('seed', 0)}. The library file is not changed.")
st.markdown("Upload **one .zip** with one folder of images per class, or **images together "
            "with a .csv** that has `path,label` columns (paths are matched by file name).")


def run_upload(files: list[tuple[str, bytes]], name: str) -> None:
    """Embed and place ``files`` (name, bytes) with progress; the result goes into the session,
    an error in the upload is shown as one message."""
    folder = Path(tempfile.mkdtemp(prefix="task2vec-upload-"))
    bar = st.progress(0.0, text="Embedding")
    stages = {"features": (0.0, 0.3), "head": (0.3, 0.4), "fisher": (0.4, 1.0),
              "variational": (0.4, 1.0)}
    try:
        with st.status("Working on the upload ...", expanded=True) as status:
            def progress(stage: str, fraction: float) -> None:
                lo, hi = stages.get(stage, (0.0, 1.0))
                bar.progress(min(lo + (hi - lo) * fraction, 1.0), text=f"Embedding: {stage}")

            def waiting(ahead: int) -> None:
                status.update(label=f"Waiting: {ahead} upload(s) ahead of yours", state="running")

            with job_queue().slot(on_wait=waiting) as queued:
                if queued["max_ahead"]:
                    status.update(label="Working on the upload ...")
                    status.write(f"Waited {queued['waited']:.1f} s behind "
                                 f"{queued['max_ahead']} upload(s)")
                result = up.process(lib, files, folder,
                                    probe_network(lib.info.get("probe", "efficientnet_lite0")),
                                    name, on_stage=status.write, progress=progress)
            result["queue"] = dict(queued)
            status.update(label=f"Done in {result['seconds']['total']:.1f} s"
                          + _waited(result, " (", ")"), state="complete")
        bar.empty()
        st.session_state["upload"] = result
    except Task2VecError as exc:
        bar.empty()
        st.error(str(exc))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


with st.form("upload_form", clear_on_submit=False):
    files = st.file_uploader("Task files", accept_multiple_files=True, key="upload_files",
                             type=["zip", "csv", *sorted(e.lstrip(".") for e in up.IMAGE_EXTENSIONS)])
    name = st.text_input("Task name", value="my task", key="upload_name")
    submitted = st.form_submit_button("Embed and place", type="primary")
example = st.button(f"No dataset at hand? Try an example: {len(up.EXAMPLE_CLASSES)} footwear "
                    f"classes, {up.EXAMPLE_PER_CLASS} images each, from Fashion-MNIST's test "
                    "split", key="upload_example", icon=":material/play_arrow:")

if submitted:
    if not files:
        st.error("Choose a .zip of class folders, or images with a labels .csv, first.")
    else:
        run_upload([(f.name, f.getvalue()) for f in files], name.strip() or "my task")
elif example:
    try:
        example_files = up.example_upload()
    except Task2VecError as exc:
        st.error(str(exc))
    else:
        run_upload(example_files, up.EXAMPLE_NAME)

result = st.session_state.get("upload")
if result and result.get("library") != lib.path:
    st.info("The last upload was placed in another library; upload it again here.")
    result = None
if result:
    st.subheader(f"{result['name']}: {result['size']} images, {len(result['classes'])} classes")
    st.caption(f"Embedding norm {result['norm']:.4g} · "
               f"{store.diversity_text(lib, **result['diversity'], size=result['size'])} · "
               f"loaded in {result['seconds']['load']:.1f} s, "
               f"embedded in {result['seconds']['embed']:.1f} s" + _waited(result, " · "))
    near, exp = st.columns(2)
    with near:
        st.markdown("**Nearest library tasks** (symmetric TASK2VEC distance)")
        st.table(result["nearest"].reset_index()[["name", "family", "distance"]].round(4)
                 .set_index("name"))
    with exp:
        st.markdown("**Experts ranked for this task**")
        if result["experts"] is not None:
            st.caption(result.get("selector_note", ""))
            st.table(up.expert_table(result["experts"]))
        else:
            st.info(result["experts_note"][:1].upper() + result["experts_note"][1:] + ".")
    others = result.get("other_picks")
    if result["experts"] is not None and others is not None and len(others):
        st.markdown("**The other selectors that need only the embedding: their first choice**")
        st.dataframe(others, hide_index=True, key="upload_other_picks",
                     column_config={"held-out rel. error increase (%)":
                                    st.column_config.NumberColumn(format="%+.1f"),
                                    "held-out weighted τ": st.column_config.NumberColumn(format="%+.3f")})
    d1, d2 = st.columns(2)
    d1.download_button("Embedding (.npz)", result["embedding_npz"],
                       file_name=f"{up.safe_name(result['name'])}.task2vec.npz",
                       mime="application/octet-stream", on_click="ignore", key="upload_npz",
                       icon=":material/download:")
    d2.download_button("Nearest tasks and experts (CSV)",
                       up.results_table(result["nearest"], result["experts"], result.get("selector")),
                       file_name=f"{up.safe_name(result['name'])}-results.csv", mime="text/csv",
                       on_click="ignore", key="upload_csv", icon=":material/download:")
    st.caption("On the maps below the upload (red star) sits at the distance-weighted mean "
               f"position of its {up.NEIGHBOURS} nearest tasks: the stored maps have no model "
               "to transform new points with, and refitting them would take longer than the "
               "upload itself.")
    algo = st.session_state.get("algo") if st.session_state.get("algo") in lib.algorithms() else None
    algo = algo or (lib.algorithms() or [None])[0]
    if algo:
        nearest_ids = list(result["nearest"].index[:up.NEIGHBOURS])
        cols = st.columns(2)
        for col, space, label in ((cols[0], "task", "Task space (TASK2VEC)"),
                                  (cols[1], "domain", "Domain space")):
            spot = result["positions"].get(space, {}).get(algo)
            if spot is None:
                continue
            with col:
                fig = figures.task_map(tasks, lib.map_xy(space, algo), "family",
                                       title=f"{label}, {ALGO_NAMES.get(algo, algo)}",
                                       selected=nearest_ids, family_colors=colors,
                                       upload=(*spot, result["name"]))
                ui.show_figure(fig, f"Upload {result['name']} {label} {ALGO_NAMES.get(algo, algo)}",
                               key=f"upload_map_{space}", height=560)
