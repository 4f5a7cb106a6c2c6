"""Command line: ``python -m precompute embed PATH [...]``.

Errors the user can cause print one line and exit with code 2; nothing is written.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from .errors import Task2VecError
from .probes import DEFAULT_PROBE, available
from .task2vec import DEFAULT_INPUT_SIZE, DEFAULT_METHOD, METHODS, TaskEmbedding


def _engine_options(p: argparse.ArgumentParser) -> None:
    """Where the stage's units run (precompute.engine)."""
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: this process (default); ray: a Ray cluster's workers")
    p.add_argument("--ray-address", help="Ray cluster to use (HOST:PORT or auto; default: the "
                   "one ray start left on this machine, else a local Ray instance for this run; "
                   "local: always a local instance)")
    p.add_argument("--gpus-per-task", type=float, default=1.0,
                   help="with --engine ray --device cuda: GPUs per unit (fractions share a GPU)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m precompute",
                                     description="TASK2VEC task embeddings and task libraries.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("embed", help="embed one task (class folders, a zip of them, or a path,label CSV)")
    p.add_argument("path", help="task folder, .zip or .csv")
    p.add_argument("--probe", default=DEFAULT_PROBE, choices=available())
    p.add_argument("--weights", help="probe state-dict file (default: the installed weights)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                   help=f"Fisher estimator or domain (default: {DEFAULT_METHOD}; montecarlo: the "
                   "paper's sampled labels)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE, help="image side in pixels")
    p.add_argument("--samples", type=int, help="Fisher samples (default: one pass, 500-10,000)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--out", help="output .npz (default: <task>.task2vec.npz here)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    b = sub.add_parser("build", help="embed a whole task library into one DuckDB file (resumable)")
    b.add_argument("library", help="demo, paper, or a folder of task folders / a path,label,task CSV")
    b.add_argument("--root", help="dataset root (for the paper library)")
    b.add_argument("--db", required=True, help="output DuckDB file (replaced atomically when done)")
    b.add_argument("--probe", default=DEFAULT_PROBE, choices=available())
    b.add_argument("--methods", default=f"{DEFAULT_METHOD},domain",
                   help=f"comma-separated embedding methods (default: {DEFAULT_METHOD},domain)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE)
    b.add_argument("--maps", default="tsne,umap", help="2-D maps to compute (tsne,umap)")
    b.add_argument("--families", help="demo library only: comma-separated families to build "
                   "(default: all: fashion_mnist,glyphs,digits,emoji)")
    b.add_argument("--quiet", action="store_true")
    _engine_options(b)

    a = sub.add_parser("analyse", help="taxonomy and shared-domain checks of a library file")
    a.add_argument("--db", required=True)
    a.add_argument("--k", type=int, default=5, help="neighbours for the shared-domain check")

    from .experts import DEFAULT_EXPERTS, DEFAULT_SOURCES, DEFAULT_STEPS, EXPERT_MAX_IMAGES, MAX_TEST, MAX_TRAIN

    x = sub.add_parser("experts", help="fine-tune the expert library of a built library file (resumable)")
    x.add_argument("library", help="the LIBRARY the file was built from (demo, paper, folder or CSV)")
    x.add_argument("--db", required=True, help="library file made by build (experts are added to it)")
    x.add_argument("--root", help="dataset root (for the paper library)")
    x.add_argument("--cache", default="cache", help="folder for expert weights and cached features "
                   "(default: ./cache, git-ignored)")
    x.add_argument("--experts", type=int, default=DEFAULT_EXPERTS, help="fine-tuned experts (+ ImageNet)")
    x.add_argument("--sources", type=int, default=DEFAULT_SOURCES, help="source tasks per expert")
    x.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="fine-tuning steps per expert")
    x.add_argument("--max-images", type=int, default=EXPERT_MAX_IMAGES, help="training images per expert")
    x.add_argument("--device", default="cpu")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--quiet", action="store_true")
    _engine_options(x)

    m = sub.add_parser("matrix", help="performance matrix: linear classifier per expert and task (resumable)")
    m.add_argument("library", help="the LIBRARY the file was built from")
    m.add_argument("--db", required=True)
    m.add_argument("--root", help="dataset root (for the paper library)")
    m.add_argument("--cache", default="cache")
    m.add_argument("--max-train", type=int, default=MAX_TRAIN, help="train images per task (stratified)")
    m.add_argument("--max-test", type=int, default=MAX_TEST, help="test images per task (stratified)")
    m.add_argument("--device", default="cpu")
    m.add_argument("--quiet", action="store_true")
    _engine_options(m)

    u = sub.add_parser("add-expert", help="add your own pretrained model(s) to a built library "
                       "as experts (then run matrix)")
    u.add_argument("--db", required=True, help="library file made by build")
    u.add_argument("--name", help="the expert's name (it becomes user/NAME)")
    u.add_argument("--arch", help="torchvision architecture by name, e.g. resnet18, "
                   "mobilenet_v3_small (or a probe: efficientnet_lite0)")
    u.add_argument("--weights", help="state-dict file (torch.save(model.state_dict(), FILE)); "
                   "read with weights_only=True, never unpickled")
    u.add_argument("--trained-on", help="the task it was trained on: a task id of the library, or "
                   "a task folder, zip or CSV (embedded here); without it TASK2VEC cannot rank it")
    u.add_argument("--input-size", type=int, help="image side the model sees (default: the "
                   "library's input size)")
    u.add_argument("--manifest", help="instead of --name/--arch/--weights: a CSV with a header "
                   "name,arch,weights[,trained_on][,input_size], one model a line")
    u.add_argument("--cache", default="cache", help="where the weights are copied (give matrix "
                   "the same --cache)")
    u.add_argument("--quiet", action="store_true")

    r = sub.add_parser("remove-expert", help="remove models added with add-expert")
    r.add_argument("--db", required=True)
    r.add_argument("--name", required=True, action="append",
                   help="NAME or user/NAME (repeat for several)")

    v = sub.add_parser("evaluate", help="model selection: Table 1 of the paper for this library")
    v.add_argument("--db", required=True)
    v.add_argument("--seeds", type=int, default=5, help="seeds of the task split")
    v.add_argument("--folds", type=int, default=3, help="folds over tasks per seed")
    v.add_argument("--quiet", action="store_true")
    return parser


def _summary(e: TaskEmbedding, out: Path) -> str:
    m = e.meta
    v = e.values
    counts = ", ".join(f"{n}" for n in m.get("class_counts", []))
    lines = [
        f"task        {m['task']}  ({m['num_images']} images, {m['num_classes']} classes"
        + (f": {counts}" if counts else "") + ")",
        f"probe       {e.probe}  input {m['input_size']} px  device {m['device']}",
        f"method      {e.method}  seed {m['seed']}"
        + (f"  samples {m['fisher_samples']} (batch {m['batch_size']})" if "fisher_samples" in m else ""),
        f"embedding   {v.size} filters  L1 norm {e.norm:.4g}  min {v.min():.3g}  "
        f"median {float(sorted(v)[v.size // 2]):.3g}  max {v.max():.3g}",
        "time        " + "  ".join(f"{k.removesuffix('_s')} {s:.2f}s" for k, s in m["timings_s"].items()),
        f"written     {out}",
    ]
    return "\n".join(lines)


def _embed(args: argparse.Namespace) -> int:
    from .probes import create
    from .task2vec import embed
    from .tasks import load_task

    out = Path(args.out) if args.out else Path(f"{Path(args.path).stem}.task2vec.npz")
    if out.exists() and out.is_dir():
        raise Task2VecError(f"--out {out} is a directory; give a file name")
    if not out.parent.exists():
        raise Task2VecError(f"output folder {out.parent} does not exist")
    task = load_task(args.path, input_size=args.input_size, progress=not args.quiet)
    probe = create(args.probe, weights=args.weights)
    result = embed(task, probe, method=args.method, progress=not args.quiet, seed=args.seed,
                   device=args.device, input_size=args.input_size,
                   fisher_samples=args.samples, batch_size=args.batch_size)
    result.meta["class_counts"] = task.class_counts()
    result.save(out)
    print(_summary(result, out))
    return 0


def _library_specs(args: argparse.Namespace, seed: int):
    """The specs of LIBRARY, read with ``seed`` (it picks each task's images and splits)."""
    if args.library == "demo":
        from .libraries.demo import FAMILIES, read_demo_library
        families = getattr(args, "families", None)  # build has --families; experts, matrix not
        return read_demo_library(seed=seed, families=families.split(",") if families
                                 else FAMILIES)
    if args.library == "paper":
        from .libraries.paper import read_paper_library
        if not args.root:
            raise Task2VecError("the paper library needs --root DIR (where the datasets are)")
        return read_paper_library(args.root, seed=seed)
    from .libraries.user import read_user_library
    return read_user_library(args.library, seed=seed)


@contextmanager
def _executor(args: argparse.Namespace):
    """The executor ``--engine`` names, closed (a local Ray instance shut down) when done."""
    from .engine import executor

    ex = executor(args.engine, address=args.ray_address, device=args.device,
                  gpus_per_task=args.gpus_per_task, progress=not args.quiet)
    try:
        yield ex
    except Task2VecError:
        ex.close()
        raise
    except BaseException:  # a crash: a local Ray instance's logs are kept for a look
        ex.close(keep_logs=True)
        raise
    ex.close()


def _build(args: argparse.Namespace) -> int:
    from .build import build_library

    specs = _library_specs(args, args.seed)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    maps = [m.strip() for m in args.maps.split(",") if m.strip()]
    with _executor(args) as ex:
        db = build_library(specs, args.db, library=args.library, probe=args.probe, methods=methods,
                           input_size=args.input_size, device=args.device, seed=args.seed,
                           maps=maps, progress=not args.quiet, executor=ex)
    print(f"library {args.library}: {len(specs)} tasks written to {db}")
    return 0


def _analyse(args: argparse.Namespace) -> int:
    from .analysis import markdown, report

    if not Path(args.db).is_file():
        raise Task2VecError(f"no such library file: {args.db}")
    print(markdown(report(args.db, k=args.k)))
    return 0


def _library_specs_of(args: argparse.Namespace) -> list:
    """The library's specs, read with the seed the file was built with."""
    from . import store

    con = store.open_library(args.db, read_only=True)
    try:
        info = store.get_info(con)
    finally:
        con.close()
    if Path(str(info.get("library"))).name != Path(args.library).name:
        raise Task2VecError(f"{args.db} was built from library {info.get('library')!r}, "
                            f"not {args.library!r}")
    return _library_specs(args, int(info.get("seed", 0)))


def _experts(args: argparse.Namespace) -> int:
    from . import store
    from .experts import build_experts

    specs = _library_specs_of(args)
    with _executor(args) as ex, store.updating(args.db) as con:
        plans = build_experts(con, specs, args.cache, num_experts=args.experts, sources=args.sources,
                              steps=args.steps, max_images=args.max_images, seed=args.seed,
                              device=args.device, progress=not args.quiet, executor=ex)
        rows = con.execute("SELECT expert_id, meta->>'seconds', meta->>'images' FROM experts "
                           "ORDER BY expert_id").fetchall()
    for expert_id, seconds, images in rows:
        if seconds is not None:  # a user's model was not trained here
            print(f"{expert_id:<60} {images:>6} images {float(seconds):8.2f} s")
    print(f"{len(plans)} experts in {args.db}")
    return 0


def _matrix(args: argparse.Namespace) -> int:
    from . import store
    from .experts import compute_matrix

    specs = _library_specs_of(args)
    with _executor(args) as ex, store.updating(args.db) as con:
        timings = compute_matrix(con, specs, args.cache, device=args.device, max_train=args.max_train,
                                 max_test=args.max_test, progress=not args.quiet, executor=ex)
        n = con.execute("SELECT count(*), avg(seconds) FROM performance").fetchone()
    tail = sum(timings["tail_s"].values())
    print(f"performance matrix: {n[0]} expert-task pairs in {args.db} ({timings['pairs']} this run; "
          f"trunk {timings['trunk_s']:.1f} s, expert features {tail:.1f} s, "
          f"classifiers {timings['fit_s']:.1f} s)")
    return 0


def _add_expert(args: argparse.Namespace) -> int:
    from . import store, user_models

    if args.manifest:
        if args.name or args.arch or args.weights or args.trained_on or args.input_size:
            raise Task2VecError("give either --manifest or --name/--arch/--weights (with "
                                "--trained-on, --input-size), not both")
        entries = user_models.read_manifest(args.manifest)
    else:
        missing = [f"--{o}" for o in ("name", "arch", "weights") if not getattr(args, o)]
        if missing:
            raise Task2VecError(f"add-expert needs {', '.join(missing)} (or --manifest FILE)")
        entries = [user_models.Entry(args.name, args.arch, args.weights, args.trained_on,
                                     args.input_size)]
    # everything is checked on a read-only connection before the file is touched
    con = store.open_library(args.db, read_only=True)
    try:
        prepared = user_models.prepare(con, entries, progress=not args.quiet)
    finally:
        con.close()
    with store.updating(args.db) as con:
        user_models.write(con, prepared, args.cache)
    for p in prepared:
        m = p.meta
        print(f"added {p.expert_id}: {m['arch']}, {m['feature_dim']} features at "
              f"{m['input_size']} px, " + ("trained on " + (p.source_tasks[0] if p.source_tasks
                                                           else m["trained_on"]["path"])
                                          if m["task_known"] else "training task unknown"))
    print(f"next: python -m precompute matrix LIBRARY --db {args.db} --cache {args.cache} "
          "fills its column; then evaluate")
    return 0


def _remove_expert(args: argparse.Namespace) -> int:
    from . import store, user_models

    con = store.open_library(args.db, read_only=True)
    try:  # checked before the file is copied
        user_models.removable(con, args.name)
    finally:
        con.close()
    with store.updating(args.db) as con:
        ids = user_models.remove(con, args.name)
    print(f"removed {', '.join(ids)} from {args.db}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from . import store
    from .selection import evaluate, table1

    with store.updating(args.db) as con:
        summary = evaluate(con, seeds=args.seeds, folds=args.folds, progress=not args.quiet)
    print(table1(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"embed": _embed, "build": _build, "analyse": _analyse, "experts": _experts,
                "matrix": _matrix, "evaluate": _evaluate, "add-expert": _add_expert,
                "remove-expert": _remove_expert}[args.command](args)
    except Task2VecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
