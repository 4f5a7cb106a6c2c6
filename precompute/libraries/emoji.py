"""The demo library's ``emoji`` family: colour images with a semantic taxonomy, like iNaturalist.

Unicode sorts every emoji into a group and a subgroup (``emoji-test.txt``, Debian
``unicode-data``, e.g. Animals & Nature > animal-mammal); the images are renders of Noto Color
Emoji (Debian ``fonts-noto-color-emoji``). The tasks:

- one per subgroup with at least ``EMOJI_CLASSES[0]`` distinct emoji: which emoji is this
  (animal-mammal: which mammal?), up to ``EMOJI_CLASSES[1]`` of them, in a seeded choice;
  taxonomy ``("emoji", group, subgroup)``;
- one per group: which subgroup is this emoji from, over all the group's emoji; taxonomy
  ``("emoji", group)``, the parent of its subgroup tasks, whose emoji it renders too (they
  share a domain, so demo.py marks them related).

Left out: the Component group (skin tones and hair styles alone), every emoji with a skin-tone
modifier (U+1F3FB..U+1F3FF: only the base emoji, so a class is never five near-copies), and
emoji that the font does not draw as one non-empty bitmap (decided from the font, so the same
on every run with the same packages; without Pillow's raqm layout, ZWJ sequences and flags
draw as several glyphs and are left out too). With Debian 12's packages: 1,870 emoji, 99 tasks
(90 subgroup and 9 group tasks) of 50 to 8,000 images, 60,452 in all, at scale 1.

Each image is an augmented render (:func:`render_emoji`) drawn from a per-task generator, so
the same task gives identical arrays on every call. Measured on this 2-core CPU (shared, under
``nice``): about 1,400 images/s at 32 px once the base renders are cached (2 s for all 1,870,
once per process, on the first :func:`read_emoji_tasks`), so the family's images at scale 1
render in under a minute, against about 10 minutes to embed them.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from ..errors import Task2VecError
from .base import Record, TaskSpec
from .demo import (MIN_PER_CLASS, _deal_sizes, _scaled, _split_evenly, _task_rng,
                   _test_count, _test_shortfall)

__all__ = ["read_emoji_tasks", "emoji_inventory", "render_emoji", "EMOJI_FONT", "EMOJI_TEST"]

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")  # fonts-noto-color-emoji
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")  # unicode-data

EMOJI_SIDE = 32  # rendered images are EMOJI_SIDE x EMOJI_SIDE RGB uint8, like GLYPH_SIDE
EMOJI_CLASSES = (5, 20)  # emoji per subgroup task: fewer, no task; more, a seeded choice
_BITMAP_SIZE = 109  # the one size of the font's bitmaps; Pillow refuses others
_SKIN_TONES = range(0x1F3FB, 0x1F400)
_LEFT_OUT_GROUPS = {"Component"}


@dataclass(frozen=True)
class Emoji:
    text: str  # the code point sequence
    name: str  # its CLDR short name, the class label
    group: str
    subgroup: str


def read_emoji_tasks(seed: int, scale: float) -> list[TaskSpec]:
    """The family's TaskSpecs, group task first, then its subgroup tasks, group by group
    (``seed`` and ``scale`` as for :func:`.demo.read_demo_library`, which checks them).

    Sizes are the same heavy-tailed quantiles as the other families', dealt by their own
    generator, so adding this family changed no other task's size."""
    groups: dict[str, dict[str, list[Emoji]]] = {}
    for e in emoji_inventory():
        groups.setdefault(e.group, {}).setdefault(e.subgroup, []).append(e)
    plans = []
    for group, subgroups in groups.items():
        if len(subgroups) >= 2:
            plans.append((group, None, subgroups))
        plans += [(group, sub, members) for sub, members in subgroups.items()
                  if len(members) >= EMOJI_CLASSES[0]]
    sizes = _deal_sizes([None] * len(plans), _task_rng(seed, "emoji", stream=1))
    return [_emoji_spec(*plan, size, seed, scale) for plan, size in zip(plans, sizes)]


def emoji_inventory() -> tuple[Emoji, ...]:
    """The emoji the family draws from, in the file's order (see the module docstring)."""
    for path, package in ((EMOJI_FONT, "fonts-noto-color-emoji"), (EMOJI_TEST, "unicode-data")):
        if not Path(path).is_file():
            raise Task2VecError(f"{path} not found: install the Debian package {package} "
                                f"(apt-get install {package}, or make setup)")
    return _inventory(str(EMOJI_FONT), str(EMOJI_TEST))


@lru_cache(maxsize=4)
def _inventory(font: str, data: str) -> tuple[Emoji, ...]:
    return tuple(e for e in _read_emoji_test(data) if _base_render(font, e.text) is not None)


_LINE = re.compile(r"([0-9A-F ]+?)\s*;\s*fully-qualified\s*#\s*\S+\s+E\d+\.\d+\s+(.+)")


def _read_emoji_test(path: str) -> list[Emoji]:
    group = subgroup = None
    out = []
    for line in Path(path).read_text("utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif (m := _LINE.fullmatch(line.strip())) and group not in _LEFT_OUT_GROUPS:
            codes = [int(c, 16) for c in m.group(1).split()]
            if not any(c in _SKIN_TONES for c in codes):
                out.append(Emoji("".join(map(chr, codes)), m.group(2).strip(), group, subgroup))
    if not out:
        raise Task2VecError(f"{path} lists no fully-qualified emoji: is it Unicode's "
                            "emoji-test.txt (Debian unicode-data)?")
    return out


# --------------------------------------------------------------------------- tasks


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _emoji_spec(group: str, subgroup: str | None, members, size: int, seed: int,
                scale: float) -> TaskSpec:
    if subgroup is None:  # the group task: labels are subgroups, each over all its emoji
        task_id, taxonomy = f"emoji/{_slug(group)}", ("emoji", group)
        labels = tuple(members)
        pools = tuple(tuple(e.text for e in members[s]) for s in labels)
    else:
        task_id, taxonomy = f"emoji/{_slug(group)}/{_slug(subgroup)}", ("emoji", group, subgroup)
        # As for glyphs: full-scale tasks keep >= 4 images per class (sizes start at 50).
        k = max(EMOJI_CLASSES[0], min(len(members), EMOJI_CLASSES[1], size // 4))
        picked = np.sort(_task_rng(seed, task_id, stream=2).permutation(len(members))[:k])
        labels = tuple(members[i].name for i in picked)
        pools = tuple((members[i].text,) for i in picked)
    n = _scaled(size, scale, MIN_PER_CLASS * len(labels), None)
    n_test = sum(_test_count(q) for q in _split_evenly(n, len(labels)))
    added = _test_shortfall(n_test, scale)
    meta = {
        "num_images": n + added, "num_train": n - n_test, "num_test": n_test + added,
        "added_test": added,
        "classes": sorted(labels), "seed": seed, "dealt_size": size, "group": group, "subgroup": subgroup,
        "emoji": {label: list(pool) for label, pool in zip(labels, pools)},
        "source": f"Noto Color Emoji ({EMOJI_FONT}), Unicode emoji-test.txt ({EMOJI_TEST})",
    }
    return TaskSpec(task_id, "emoji", taxonomy[-1], taxonomy,
                    partial(_emoji_records, labels, pools, n, added, seed, task_id, str(EMOJI_FONT)),
                    meta)


def _emoji_records(labels: tuple[str, ...], pools: tuple[tuple[str, ...], ...], n: int,
                   added: int, seed: int, task_id: str, font: str) -> list[Record]:
    rng, more = _task_rng(seed, task_id), _task_rng(seed, task_id, stream=3)
    records, extra = [], []
    for label, pool, count, k in zip(labels, pools, _split_evenly(n, len(labels)),
                                     _split_evenly(added, len(labels))):
        # Every emoji of the label equally often, in a seeded order, so that train and test
        # draw from the same mix.
        picks = rng.permutation(np.arange(count) % len(pool))
        n_test = _test_count(count)
        records += [Record(render_emoji(pool[i], rng, font=font), label,
                           "test" if j < n_test else "train") for j, i in enumerate(picks)]
        # more test images (demo._test_shortfall), from their own generator
        extra += [Record(render_emoji(pool[i], more, font=font), label, "test")
                  for i in more.permutation(np.arange(k) % len(pool))]
    return [records[i] for i in rng.permutation(len(records))] + extra


# --------------------------------------------------------------------------- rendering


@lru_cache(maxsize=1)
def _font(path: str):
    from PIL import ImageFont

    # Pillow's default layout (raqm where installed) joins ZWJ sequences and flags into one
    # glyph; the bitmaps exist only at _BITMAP_SIZE.
    return ImageFont.truetype(path, _BITMAP_SIZE)


@lru_cache(maxsize=4096)
def _base_render(font_path: str, text: str):
    """The emoji's bitmap cropped to its pixels and shrunk to fit 2 * EMOJI_SIDE (RGBA), or
    None if the font draws it as nothing (its .notdef is empty) or as several glyphs. Cached:
    every image of the emoji starts from it (16 KB each, 30 MB for all; drawing the bitmap,
    about 1 ms, is most of the inventory's 2 s)."""
    from PIL import Image, ImageDraw

    font = _font(font_path)
    if font.getlength(text) > 1.5 * font.getlength("\U0001F600"):
        return None  # a sequence the font has no single glyph for
    _, _, right, bottom = font.getbbox(text)
    image = Image.new("RGBA", (max(right, 1), max(bottom, 1)))
    ImageDraw.Draw(image).text((0, 0), text, font=font, embedded_color=True)
    box = image.getchannel("A").getbbox()
    if box is None:
        return None
    image = image.crop(box)
    image.thumbnail((2 * EMOJI_SIDE, 2 * EMOJI_SIDE), Image.Resampling.BOX)
    return image


def render_emoji(text: str, rng: np.random.Generator, font: str | Path | None = None
                 ) -> np.ndarray:
    """One augmented rendering of an emoji: uint8 [EMOJI_SIDE, EMOJI_SIDE, 3].

    Augmentations, drawn from ``rng``: extent 50-90% of the side, rotation within +-15 degrees
    (arrows stay apart: they differ by 45), translation within +-10% of the side, on a
    background of a random colour fading into a second one along a random direction; composed
    at twice the side and box-downsampled, for anti-aliasing; then a slight Gaussian blur,
    pixel noise (sd 0-10) and a JPEG encoding at quality 30-90.
    """
    from PIL import Image, ImageFilter

    base = _base_render(str(font or EMOJI_FONT), text)
    if base is None:
        raise Task2VecError(f"the emoji font draws no single bitmap for {text!r}")
    side, big = EMOJI_SIDE, 2 * EMOJI_SIDE  # the base renders fit the big side
    extent = rng.uniform(0.5, 0.9) * big
    angle = float(rng.uniform(-15.0, 15.0))
    dx, dy = rng.uniform(-0.1, 0.1, size=2) * big
    blur = float(rng.uniform(0.0, 0.8))
    noise = float(rng.uniform(0.0, 10.0))
    quality = int(rng.integers(30, 91))

    w, h = base.size
    f = extent / max(w, h)
    glyph = base.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR)
    glyph = glyph.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    canvas = Image.fromarray(_gradient(rng, big))
    canvas.paste(glyph, (round((big - glyph.width) / 2 + dx), round((big - glyph.height) / 2 + dy)),
                 glyph)
    image = canvas.resize((side, side), Image.Resampling.BOX)
    if blur > 0.3:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(image, np.float32) + rng.normal(0.0, noise, (side, side, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _gradient(rng: np.random.Generator, side: int) -> np.ndarray:
    """A background: a random colour fading into a second, nearby one along a random direction."""
    start = rng.uniform(0, 255, 3)
    end = np.clip(start + rng.normal(0, 60, 3), 0, 255)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-0.5, 0.5, side)
    t = np.clip(ramp[None, :] * np.cos(theta) + ramp[:, None] * np.sin(theta) + 0.5, 0, 1)
    return np.round(start + t[..., None] * (end - start)).astype(np.uint8)
