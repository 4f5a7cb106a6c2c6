"""Checks that the embedding means something (paper section 4.1), computed from a library file.

- Taxonomy (Fig. 2 centre), for each family with a taxonomy (glyphs: script genealogy; emoji:
  Unicode group > subgroup): rank correlation between the symmetric TASK2VEC distance and the
  taxonomic distance, with a bootstrap interval over tasks, beside the domain embedding's; the
  neighbourhood curve: the mean taxonomic distance of a task's k nearest tasks, against
  chance (a random neighbour) and the taxonomy itself (the best possible); and the size
  correlation (how much the distance follows the tasks' sizes instead).
- Shared domain (Fig. 1): among tasks on one domain, how often a task's nearest neighbours are
  related tasks, with TASK2VEC and with the domain embedding; for the whole family, and for
  its branch of tasks drawn from one image pool, where only the labels differ (the paper's
  iMaterialist setting, where the domain embedding cannot tell tasks apart).
- Diversity (Miranda et al. 2023, stored by the Fisher pass): its distribution per family and
  its rank correlation with what a task's diversity should not simply be, its size, and with
  what it may follow, its number of classes and its embedding's norm.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import duckdb
import numpy as np
from scipy.stats import spearmanr

from . import distances, store
from .libraries.demo import WHOLE_POOL, taxonomic_distance


@dataclass
class LibraryView:
    """The parts of a library file the checks need, in one task order."""

    ids: list[str]
    family: list[str]
    taxonomy: list[tuple[str, ...]]
    related: list[set[str]]
    task_distance: np.ndarray  # symmetric TASK2VEC distance [n, n]
    domain_distance: np.ndarray | None  # cosine distance of domain embeddings [n, n]
    num_train: list[int]

    @classmethod
    def load(cls, path, method: str | None = None) -> "LibraryView":
        """``method``: the Fisher method to compare; default the library's own."""
        con = duckdb.connect(str(path), read_only=True)
        try:
            method = method or store.task_method(store.get_info(con))
            ids, fisher = store.embedding_matrix(con, method)
            dom_ids, domain = store.embedding_matrix(con, "domain")
            rows = {r[0]: r[1:] for r in con.execute(
                "SELECT task_id, family, taxonomy, meta, num_train FROM tasks").fetchall()}
        finally:
            con.close()
        return cls(
            ids=ids, family=[rows[t][0] for t in ids],
            taxonomy=[tuple(rows[t][1]) for t in ids],
            related=[set(json.loads(rows[t][2]).get("related", [])) for t in ids],
            task_distance=distances.symmetric_matrix(fisher),
            domain_distance=distances.cosine_matrix(domain) if dom_ids == ids else None,
            num_train=[int(rows[t][3]) for t in ids])

    def subset(self, family: str, branch: str | None = None) -> "LibraryView":
        """The tasks of one family, or of one branch (second taxonomy level) of it."""
        keep = [i for i, (f, tax) in enumerate(zip(self.family, self.taxonomy))
                if f == family and (branch is None or tax[1:2] == (branch,))]
        pick = np.ix_(keep, keep)
        return LibraryView(
            [self.ids[i] for i in keep], [self.family[i] for i in keep],
            [self.taxonomy[i] for i in keep], [self.related[i] for i in keep],
            self.task_distance[pick],
            None if self.domain_distance is None else self.domain_distance[pick],
            [self.num_train[i] for i in keep])


def taxonomy_matrix(paths: list[tuple[str, ...]]) -> np.ndarray:
    return np.array([[taxonomic_distance(a, b) for b in paths] for a in paths], dtype=float)


def taxonomy_correlation(dist: np.ndarray, tax: np.ndarray) -> tuple[float, float]:
    """Spearman rho (and p-value) between embedding and taxonomic distance over task pairs."""
    upper = np.triu_indices(len(dist), 1)
    result = spearmanr(dist[upper], tax[upper])
    return float(result.statistic), float(result.pvalue)


def bootstrap_correlation(dist: np.ndarray, other: np.ndarray, *, draws: int = 1000,
                          seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Interval of the Spearman rho of :func:`taxonomy_correlation` from a bootstrap over tasks.

    Pairs are not independent (each task is in n - 1 of them), so the resampling unit is the
    task: draw n tasks with replacement and correlate over the pairs of distinct draws.
    """
    rng = np.random.default_rng(seed)
    n = len(dist)
    rhos = []
    i, j = np.triu_indices(n, 1)
    for _ in range(draws):
        pick = rng.integers(0, n, n)
        keep = pick[i] != pick[j]
        a, b = pick[i][keep], pick[j][keep]
        rhos.append(spearmanr(dist[a, b], other[a, b]).statistic)
    lo, hi = np.nanquantile(rhos, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def size_correlation(dist: np.ndarray, sizes) -> float:
    """Spearman rho of the distance with |log size ratio| over task pairs: how much a distance
    measures how many images two tasks have rather than what they ask (0 is the goal)."""
    log_size = np.log(np.asarray(sizes, dtype=float))
    return taxonomy_correlation(dist, np.abs(log_size[:, None] - log_size[None, :]))[0]


def neighbourhood_curve(dist: np.ndarray, tax: np.ndarray, max_k: int | None = None) -> dict:
    """Mean taxonomic distance from each task to its k nearest tasks, k = 1..max_k.

    Returns curves for ``embedding`` (neighbours by ``dist``), ``taxonomy`` (neighbours by the
    taxonomic distance itself: the floor) and ``chance`` (the mean over all other tasks).
    """
    n = len(dist)
    max_k = min(max_k or n - 1, n - 1)
    off = ~np.eye(n, dtype=bool)

    def curve(order_by: np.ndarray) -> np.ndarray:
        ranked = np.argsort(np.where(off, order_by, np.inf), axis=1, kind="stable")[:, :max_k]
        neighbour_tax = np.take_along_axis(tax, ranked, axis=1)
        return np.cumsum(neighbour_tax, axis=1).mean(0) / np.arange(1, max_k + 1)

    chance = tax[off].reshape(n, n - 1).mean()
    return {"k": np.arange(1, max_k + 1), "embedding": curve(dist), "taxonomy": curve(tax),
            "chance": np.full(max_k, chance)}


def related_precision(dist: np.ndarray, ids: list[str], related: list[set[str]],
                      k: int = 5) -> float:
    """Mean fraction of each task's k nearest tasks that are related to it (tasks that have any)."""
    n = len(dist)
    order = np.argsort(np.where(np.eye(n, dtype=bool), np.inf, dist), axis=1, kind="stable")[:, :k]
    scores = [np.mean([ids[j] in related[i] for j in order[i]])
              for i in range(n) if related[i]]
    return float(np.mean(scores)) if scores else float("nan")


TAXONOMY_FAMILIES = ("glyphs", "emoji")  # the families whose taxonomy is a real hierarchy
# Families whose related tasks share images: Fashion-MNIST (the whole family, and its branch
# drawn from one pool) and emoji (a group task holds the images of its subgroup tasks).
SHARED_DOMAIN = (("shared_domain", "fashion_mnist", None), ("one_pool", "fashion_mnist", WHOLE_POOL),
                 ("emoji_shared", "emoji", None))


def report(path, k: int = 5, draws: int = 1000, seed: int = 0) -> dict:
    """All checks for one library file; families missing from the file are skipped.

    ``draws`` bootstrap resamples of the tasks (seeded by ``seed``) give the 95 % intervals
    of the taxonomy correlations (0: no intervals)."""
    view = LibraryView.load(path)
    out: dict = {"tasks": len(view.ids), "taxonomy": {}}
    for family in TAXONOMY_FAMILIES:
        if view.family.count(family) < 5:
            continue
        sub = view.subset(family)
        tax = taxonomy_matrix(sub.taxonomy)
        rho, p = taxonomy_correlation(sub.task_distance, tax)
        entry = {"family": family, "tasks": len(sub.ids), "spearman": rho, "p_value": p,
                 "curve": neighbourhood_curve(sub.task_distance, tax),
                 "size": size_correlation(sub.task_distance, sub.num_train)}
        if draws:
            entry["interval"] = bootstrap_correlation(sub.task_distance, tax, draws=draws, seed=seed)
        if sub.domain_distance is not None:
            entry["spearman_domain"] = taxonomy_correlation(sub.domain_distance, tax)[0]
            entry["size_domain"] = size_correlation(sub.domain_distance, sub.num_train)
            if draws:
                entry["interval_domain"] = bootstrap_correlation(sub.domain_distance, tax,
                                                                 draws=draws, seed=seed)
        out["taxonomy"][family] = entry
    for key, family, branch in SHARED_DOMAIN:
        sub = view.subset(family, branch)
        if len(sub.ids) >= k + 1 and any(sub.related):
            out[key] = _related_check(sub, k) | {"family": family, "branch": branch}
    div = diversity(path)
    if div is not None:
        out["diversity"] = div
    return out


def diversity(path) -> dict | None:
    """The diversity coefficients of a library file: how many tasks have one (and why the others
    do not), their quartiles per family, and Spearman rho against log(train images), the number
    of classes, the embedding's L1 norm and (in a file with a performance matrix) the best
    expert's test error, over all tasks with a value, within each family, and among the
    one-image-pool tasks (all of one size: what the coefficient says at equal size).
    None for a file without coefficients."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        method = store.task_method(store.get_info(con))
        has_matrix = con.execute("SELECT count(*) FROM information_schema.tables "
                                 "WHERE table_name = 'performance'").fetchone()[0]
        best = ("(SELECT min(p.test_error) FROM performance p WHERE p.task_id = t.task_id)"
                if has_matrix else "NULL")
        rows = con.execute(
            "SELECT t.family, t.num_train, len(t.classes), e.norm, "
            "TRY_CAST(json_extract(e.meta, '$.diversity.value') AS DOUBLE), "
            f"json_extract_string(e.meta, '$.diversity.reason'), {best}, t.taxonomy[2] "
            "FROM tasks t JOIN embeddings e USING (task_id) WHERE e.method = ? "
            "AND json_extract(e.meta, '$.diversity') IS NOT NULL ORDER BY t.task_id",
            [method]).fetchall()
    finally:
        con.close()
    if not rows:
        return None
    undefined = Counter(r[5] or "no reason recorded" for r in rows if r[4] is None)
    valued = [r for r in rows if r[4] is not None]

    def summary(part: list) -> dict:
        div = np.array([r[4] for r in part])
        out = {"tasks": len(part), "quartiles": [float(q) for q in np.quantile(div, [0, .25, .5, .75, 1])]}
        if len(part) >= 5:
            for key, col in (("size", np.log([r[1] for r in part])), ("classes", [r[2] for r in part]),
                             ("norm", [r[3] for r in part]), ("error", [r[6] for r in part])):
                col = np.array(col, dtype=float)
                if np.isnan(col).any():  # no performance matrix (or not for every task)
                    continue
                if np.ptp(col) > 0 and np.ptp(div) > 0:  # a constant has no rank correlation
                    out[key] = float(spearmanr(div, col).statistic)
        return out

    families = sorted({r[0] for r in valued})
    pool = [r for r in valued if r[0] == "fashion_mnist" and r[7] == WHOLE_POOL]
    return {"method": method, "tasks": len(rows), "undefined": dict(undefined),
            "all": summary(valued) if valued else None,
            "families": {f: summary([r for r in valued if r[0] == f]) for f in families},
            "one_pool": summary(pool) if pool else None}


def _related_check(sub: LibraryView, k: int) -> dict:
    share = {"tasks": len(sub.ids), "k": k,
             "task2vec": related_precision(sub.task_distance, sub.ids, sub.related, k),
             "chance": float(np.mean([len(r & set(sub.ids)) / (len(sub.ids) - 1)
                                      for r in sub.related if r]))}
    if sub.domain_distance is not None:
        share["domain"] = related_precision(sub.domain_distance, sub.ids, sub.related, k)
    return share


def markdown(result: dict) -> str:
    """The report as the Markdown that goes into docs/RESULTS.md."""
    lines = [f"Library: {result['tasks']} tasks.", ""]

    def rho(t, suffix=""):
        text = f"{t['spearman' + suffix]:.3f}"
        if "interval" + suffix in t:
            lo, hi = t["interval" + suffix]
            text += f" [{lo:.3f}, {hi:.3f}]"
        return text

    for t in result.get("taxonomy", {}).values():
        lines += [f"### Taxonomy ({t['family']}, {t['tasks']} tasks)", "",
                  "| measure | TASK2VEC | domain embedding |", "|---|---|---|",
                  f"| Spearman rho, distance vs taxonomic distance (95 % bootstrap over tasks) | "
                  f"**{rho(t)}** (p = {t['p_value']:.2g}) | "
                  + (rho(t, "_domain") if "spearman_domain" in t else "") + " |",
                  f"| Spearman rho, distance vs abs(log size ratio) (0 is the goal) | {t['size']:.3f} | "
                  + (f"{t['size_domain']:.3f}" if "size_domain" in t else "") + " |",
                  "", "Neighbourhood curve (paper Fig. 2 centre): mean taxonomic distance of the "
                  "k nearest tasks.", "", "| k | TASK2VEC | taxonomy (floor) | chance |", "|---|---|---|---|"]
        c = t["curve"]
        for i in [0, 1, 2, 4, 9, 19, 39]:
            if i < len(c["k"]):
                lines.append(f"| {c['k'][i]} | {c['embedding'][i]:.2f} | {c['taxonomy'][i]:.2f} | "
                             f"{c['chance'][i]:.2f} |")
        lines.append("")
    for key, title in (("shared_domain", "Shared domain"), ("one_pool", "One image pool"),
                       ("emoji_shared", "Shared images (a group task and its subgroup tasks)")):
        if key not in result:
            continue
        s = result[key]
        where = s["family"] + (f" / {s['branch']}" if s.get("branch") else "")
        lines += [f"### {title} ({where}, {s['tasks']} tasks)", "",
                  f"Fraction of each task's {s['k']} nearest tasks that are related tasks:", "",
                  "| embedding | precision@k |", "|---|---|",
                  f"| TASK2VEC (symmetric distance) | **{s['task2vec']:.3f}** |"]
        if "domain" in s:
            lines.append(f"| domain embedding (cosine) | {s['domain']:.3f} |")
        lines += [f"| chance | {s['chance']:.3f} |", ""]
    if result.get("diversity"):
        lines += _diversity_markdown(result["diversity"])
    return "\n".join(lines)


def _diversity_markdown(d: dict) -> list[str]:
    def rho(s, key):
        return f"{s[key]:.3f}" if key in s else ""

    lines = [f"### Diversity coefficient ({d['tasks']} tasks with the coefficient's record)", "",
             "| tasks | n | min | quartile 1 | median | quartile 3 | max | "
             "rho with log size | with classes | with norm | with best-expert error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [("all", d["all"])] + list(d["families"].items())
    rows.append((f"fashion_mnist / {WHOLE_POOL} (one size)", d.get("one_pool")))
    for name, s in rows:
        if s:
            q = s["quartiles"]
            lines.append(f"| {name} | {s['tasks']} | " + " | ".join(f"{v:.3f}" for v in q)
                         + f" | {rho(s, 'size')} | {rho(s, 'classes')} | {rho(s, 'norm')} | "
                         f"{rho(s, 'error')} |")
    lines += [""] + [f"- no value for {n} tasks: {reason}" for reason, n in d["undefined"].items()]
    return lines + [""]
