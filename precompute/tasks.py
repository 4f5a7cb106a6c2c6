"""Labelled image tasks read into one uniform record, :class:`TaskData`.

One reader per source format, all ending in the same record (the Hugging Face ``datasets``
builder pattern):

- a folder with one subfolder per class (``animals/cat/1.png``, ``animals/dog/7.jpg``);
- a ``.zip`` of such a folder, extracted safely into a temporary folder;
- a ``.csv`` with ``path,label`` columns;
- in-memory arrays (:func:`task_from_arrays`).

Every image goes through :func:`decode_image`: EXIF orientation applied, every PIL mode
converted to RGB, then *squashed* to ``input_size x input_size`` (no crop, so nothing of the
image is lost; the aspect ratio is not kept). Every problem a user can cause raises
:class:`Task2VecError` with one line naming the offending file, label or class.
"""
from __future__ import annotations

import csv
import os
import re
import stat
import sys
import tempfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from .errors import Task2VecError

__all__ = ["TaskData", "load_task", "task_from_arrays", "decode_image", "resize_array",
           "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

# Limits against hostile or broken input; module constants so a caller (or a test) can change
# them. PIL's own decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS, about 89 MP) still
# applies on top of MAX_IMAGE_PIXELS: raise both to accept larger images.
MAX_IMAGE_PIXELS = 50_000_000
MAX_ZIP_BYTES = 2 * 1024**3  # total uncompressed size of a zip
MAX_ZIP_MEMBERS = 100_000
# Images barely compress (PNG/JPEG about 1:1, raw BMP/TIFF photos a few x); a member that
# shrinks more than this is suspect. Checked only above _RATIO_MIN_BYTES because small files
# cannot do harm within MAX_ZIP_BYTES anyway.
MAX_ZIP_RATIO = 100
_RATIO_MIN_BYTES = 1024**2
MAX_CLASSES = 10_000

# Measured on the 2-core machines: a 500-image, 10-class folder of 64x64 PNGs loads in
# 0.106 s (median of 7) with one thread and 0.082 s with two; PIL releases the GIL while
# decoding and resizing.
_DECODE_WORKERS = 2


@dataclass(repr=False)
class TaskData:
    """A labelled image task, images already resized to a square side.

    Attributes:
        name: task name (folder, zip or CSV stem, or the name given).
        images: uint8 RGB tensor [N, 3, S, S].
        labels: int64 tensor [N], values 0..C-1; ``classes[label]`` is its class name.
        classes: class names, index = label; sorted by name for folders, zips and CSVs.
        source: the path the task came from, or ``"<memory>"``.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def size(self) -> int:
        """Number of images N."""
        return int(self.images.shape[0])

    def class_counts(self) -> list[int]:
        """Images per class, index = label: length C."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def __repr__(self) -> str:
        # The default dataclass repr would print every pixel.
        side = int(self.images.shape[-1])
        return (
            f"TaskData(name={self.name!r}, size={self.size}, num_classes={self.num_classes}, "
            f"input_size={side}, source={self.source!r})"
        )


# --------------------------------------------------------------------------- public readers


def load_task(
    path: str | os.PathLike,
    *,
    input_size: int,
    name: str | None = None,
    progress: bool = False,
) -> TaskData:
    """Read a task from a class-folder tree, a ``.zip`` of one, or a ``.csv`` (``path,label``).

    Folder layout: ``root/<class>/<image>``. Class folders hold images only: a nested folder
    inside a class folder is an error (rather than silently dropping its images). Hidden
    files and ``__MACOSX`` folders are ignored; non-image files next to the class folders
    (README, LICENSE) are ignored, but an image there is an error because it has no class.
    A root holding nothing but one folder that itself holds folders (the usual zip layout
    ``animals.zip/animals/cat/...``) is descended into.

    Zip: extracted into a temporary folder that is removed afterwards, also on errors.
    Entries with absolute paths, ``..``, symbolic links or encryption are refused, as are
    archives over MAX_ZIP_BYTES or MAX_ZIP_MEMBERS and members compressed more than
    MAX_ZIP_RATIO:1. A zip inside the zip is not read: it counts as a non-image file.

    CSV: header with ``path`` and ``label`` columns (others ignored); relative paths are
    relative to the CSV's folder.

    Args:
        path: folder, ``.zip`` or ``.csv``.
        input_size: side S in pixels of the square images returned.
        name: task name; defaults to the folder, zip or CSV stem.
        progress: show a progress bar on stderr while decoding.

    Returns:
        TaskData with images uint8 [N, 3, S, S] and labels int64 [N]; classes sorted by name.
    """
    size = _check_input_size(input_size)
    if not isinstance(path, (str, os.PathLike)):
        raise Task2VecError(f"task path must be a file or folder path, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise Task2VecError(f"no such file or folder: {shown_name(path)}")
    suffix = path.suffix.lower()
    if path.is_dir():
        task_name = name or path.resolve().name
        items = class_folder_items(path, shown_root=shown_name(path))
        return _build(task_name, items, size, progress, source=str(path))
    if suffix == ".zip":
        # The temporary folder goes away on success and on every error alike.
        with tempfile.TemporaryDirectory(prefix="task2vec-zip-") as tmp:
            _extract_zip(path, Path(tmp))
            items = class_folder_items(Path(tmp), shown_root=shown_name(path))
            return _build(name or path.stem, items, size, progress, source=str(path))
    if suffix == ".csv":
        items = csv_items(path)
        return _build(name or path.stem, items, size, progress, source=str(path))
    raise Task2VecError(
        f"unsupported task file {shown_name(path)}: give a folder with one subfolder per class, "
        "a .zip of such a folder, or a .csv with path,label columns"
    )


def task_from_arrays(
    images: np.ndarray | torch.Tensor,
    labels: Sequence[Hashable] | np.ndarray | torch.Tensor,
    *,
    input_size: int,
    name: str = "task",
    class_names: Sequence[str] | None = None,
) -> TaskData:
    """Build a task from in-memory images and labels.

    Args:
        images: uint8, or float in [0, 1]; shaped [N, H, W] (grayscale), [N, H, W, 3] or
            [N, 3, H, W]. When both dimension 1 and the last are 3, channels-first is assumed.
        labels: N hashable values (ints or strings); the distinct values, sorted, become
            labels 0..C-1.
        input_size: side S of the square images returned; other sizes are squashed to S x S
            with the same bilinear resize as image files.
        name: task name.
        class_names: optional C names, one per distinct label value in sorted order;
            default ``str(value)``.

    Returns:
        TaskData with images uint8 [N, 3, S, S], labels int64 [N], source ``"<memory>"``.
    """
    size = _check_input_size(input_size)
    pixels = _images_to_nhwc_uint8(images)  # [N, H, W, C], C in {1, 3}
    values = _labels_to_list(labels)
    if len(values) != len(pixels):
        raise Task2VecError(
            f"got {len(pixels)} images but {len(values)} labels; give one label per image"
        )
    try:
        distinct = sorted(set(values))
    except TypeError as exc:  # unhashable labels, or e.g. ints mixed with strings
        raise Task2VecError(f"labels must be hashable values of one sortable type ({exc})") from None
    if class_names is None:
        classes = [str(v) for v in distinct]
    else:
        classes = [str(c) for c in class_names]
        if len(classes) != len(distinct):
            raise Task2VecError(
                f"class_names has {len(classes)} names but the labels have {len(distinct)} "
                "distinct values; give one name per distinct label, in sorted label order"
            )
    index = {value: i for i, value in enumerate(distinct)}
    label_ids = [index[v] for v in values]
    counts = Counter(label_ids)
    check_class_counts(classes, [counts[i] for i in range(len(classes))], where="the labels")

    out = np.empty((len(pixels), size, size, 3), dtype=np.uint8)
    for i, pixel in enumerate(pixels):
        out[i] = resize_array(pixel, size)
    return TaskData(
        name=name,
        images=torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(),
        labels=torch.tensor(label_ids, dtype=torch.int64),
        classes=classes,
        source="<memory>",
    )


def decode_image(path: str | os.PathLike, input_size: int, shown: str | None = None) -> np.ndarray:
    """Decode one image file to RGB uint8 [S, S, 3], S = ``input_size``.

    EXIF orientation is applied; 16-bit and float grayscale are scaled by the image's own
    maximum; transparency is composited onto white; the result is squashed to S x S.
    ``shown`` is the name used in error messages (default: the path).
    """
    shown = shown or shown_name(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise Task2VecError(
                    f"image too large: {shown} is {width}x{height} pixels, over the limit of "
                    f"{MAX_IMAGE_PIXELS:,} (precompute.tasks.MAX_IMAGE_PIXELS); downscale it"
                )
            # JPEG only (a no-op elsewhere): decode at 1/2, 1/4 or 1/8 scale when the target
            # is that small, which is several times faster for photos.
            img.draft(None, (input_size, input_size))
            img.load()  # inside the try: PIL decodes lazily, so corrupt data fails here
            ImageOps.exif_transpose(img, in_place=True)
            return np.asarray(_squash(_to_rgb(img), input_size))
    except Task2VecError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Task2VecError(f"image too large: {shown} ({exc})") from None
    except Image.UnidentifiedImageError:
        raise Task2VecError(
            f"cannot read image {shown}: unknown format or not an image; re-save it as PNG or JPEG"
        ) from None
    except Exception as exc:  # PIL's decoders raise many exception types on corrupt files
        raise Task2VecError(
            f"cannot decode image {shown} (corrupt or truncated: {exc}); re-save or remove it"
        ) from None


# --------------------------------------------------------------------------- decoding


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, keeping what the picture looks like."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _high_bit_depth_to_rgb(img)
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info:
        # Transparent areas become white, as a viewer on a white page shows them; a plain
        # convert("RGB") would expose whatever colour hides under alpha 0.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # RGB, L, 1, P, CMYK, YCbCr (a no-op copy for RGB)


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    # Scale by the image's actual maximum: a 12-bit scan stored in 16 bits (max 4000) would
    # otherwise be clipped to white everywhere or come out nearly black.
    values = np.nan_to_num(np.asarray(img, dtype=np.float64))
    low, high = min(float(values.min()), 0.0), float(values.max())
    if high > low:
        values = (values - low) * (255.0 / (high - low))
    else:
        values = np.zeros_like(values)
    return Image.fromarray(np.rint(values).astype(np.uint8)).convert("RGB")


def resize_array(pixels: np.ndarray, size: int) -> np.ndarray:
    """One uint8 image ``[H, W]`` or ``[H, W, 1 | 3]`` -> RGB ``[S, S, 3]``, squashed like files."""
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.shape[:2] != (size, size):
        pixels = np.asarray(_squash(Image.fromarray(pixels), size))
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return pixels


def _squash(img: Image.Image, size: int) -> Image.Image:
    # reducing_gap: box-reduce large images first, then resample (faster, same quality).
    return img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)


def _decode_all(files: list[tuple[str, str]], size: int, progress: bool, desc: str) -> torch.Tensor:
    """Decode (path, shown name) pairs to uint8 [N, 3, S, S], in order."""
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    pool = ThreadPoolExecutor(max_workers=_DECODE_WORKERS)
    # PIL only *warns* between its own pixel limit and twice that; make it an error. The
    # filter list is global, so it also applies inside the worker threads.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            decoded = pool.map(lambda f: decode_image(f[0], size, shown=f[1]), files)
            bar = tqdm(decoded, total=len(files), desc=desc, unit="img", file=sys.stderr,
                       disable=not progress)
            for i, pixels in enumerate(bar):
                out[i] = pixels
        finally:
            # On the first bad file, do not decode the rest just to throw it away.
            pool.shutdown(wait=True, cancel_futures=True)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- folders and zips


@dataclass(frozen=True)
class Item:
    """One image of a task as the readers find it (a user library's also name its task)."""

    path: str  # where to read it
    shown: str  # what to call it in messages
    label: str  # class name
    task: str = ""  # user libraries: the task it belongs to
    taxonomy: tuple[str, ...] = ()  # user libraries: the task's taxonomy, root first


def _ignored(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def visible_entries(folder: Path, shown: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return sorted((e for e in entries if not _ignored(e.name)), key=lambda e: e.name)
    except OSError as exc:
        raise Task2VecError(f"cannot read folder {shown}: {exc.strerror}") from None


def class_folder_items(root: Path, shown_root: str) -> list[Item]:
    """One item per image in ``root/<class>/``, classes and files sorted by name."""
    shown = shown_root
    entries = visible_entries(root, shown)
    # Descend through wrapper folders: a root holding only one folder that holds folders.
    while len(entries) == 1 and entries[0].is_dir():
        inner = visible_entries(Path(entries[0].path), f"{shown}/{shown_name(entries[0].name)}")
        if not any(e.is_dir() for e in inner):
            break
        root, shown, entries = Path(entries[0].path), f"{shown}/{shown_name(entries[0].name)}", inner

    class_dirs = [e for e in entries if e.is_dir()]
    stray = [e.name for e in entries if not e.is_dir() and _is_image_name(e.name)]
    if stray:
        raise Task2VecError(
            f"image {shown}/{shown_name(stray[0])} is not inside a class folder; put every image "
            "into a subfolder named after its class"
        )
    if not class_dirs:
        raise Task2VecError(
            f"no class folders in {shown}: put each class's images in a subfolder named after "
            "the class (e.g. cat/1.png, dog/2.png)"
        )

    items: list[Item] = []
    counts: list[int] = []
    for class_dir in class_dirs:
        label = shown_name(class_dir.name)
        class_shown = f"{shown}/{label}"
        count = 0
        for entry in visible_entries(Path(class_dir.path), class_shown):
            entry_shown = f"{class_shown}/{shown_name(entry.name)}"
            if entry.is_dir():
                raise Task2VecError(
                    f"nested folder {entry_shown}: a class folder must hold images only; "
                    "move its images up or make it a class of its own"
                )
            if not _is_image_name(entry.name):
                raise Task2VecError(
                    f"not an image: {entry_shown} (supported: "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS))}); remove it from the class folder"
                )
            items.append(Item(entry.path, entry_shown, label))
            count += 1
        counts.append(count)
    check_class_counts([shown_name(d.name) for d in class_dirs], counts, where=shown)
    return items


def _member_parts(name: str) -> list[str]:
    # Zips made on Windows may use backslashes; treat them as separators for safety.
    return [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]


def _extract_zip(zip_path: Path, dest: Path) -> None:
    """Extract ``zip_path`` into ``dest`` after refusing unsafe entries and zip bombs."""
    shown = shown_name(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Task2VecError(f"cannot open zip archive {shown}: {exc}") from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise Task2VecError(
                f"zip archive {shown} has {len(members):,} entries, over the limit of "
                f"{MAX_ZIP_MEMBERS:,} (precompute.tasks.MAX_ZIP_MEMBERS)"
            )
        declared = 0
        for info in members:
            _check_member(info, shown)
            declared += info.file_size
        if declared > MAX_ZIP_BYTES:
            raise Task2VecError(
                f"zip archive {shown} would expand to {declared:,} bytes, over the limit of "
                f"{MAX_ZIP_BYTES:,} (precompute.tasks.MAX_ZIP_BYTES); split the task"
            )

        written = 0
        for info in members:
            parts = _member_parts(info.filename)
            if any(_ignored(p) for p in parts):
                continue
            target = dest.joinpath(*parts)
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    # Count real bytes too: the declared sizes are written by whoever made
                    # the archive.
                    while chunk := src.read(1024**2):
                        written += len(chunk)
                        if written > MAX_ZIP_BYTES:
                            raise Task2VecError(
                                f"zip archive {shown} expands beyond {MAX_ZIP_BYTES:,} bytes "
                                "(precompute.tasks.MAX_ZIP_BYTES); split the task"
                            )
                        out.write(chunk)
            except Task2VecError:
                raise
            except Exception as exc:  # bad CRC, unsupported compression, clashing names, ...
                raise Task2VecError(
                    f"cannot extract {shown_name(info.filename)} from {shown}: {exc}"
                ) from None


def _check_member(info: zipfile.ZipInfo, shown: str) -> None:
    name = info.filename
    entry = f"entry {shown_name(name)!r} in {shown}"
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise Task2VecError(f"unsafe {entry}: absolute path; re-create the zip from relative paths")
    if ".." in re.split(r"[/\\]", name):
        raise Task2VecError(f"unsafe {entry}: '..' escapes the archive; re-create the zip")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise Task2VecError(f"unsafe {entry}: symbolic link; zip the files themselves")
    if info.flag_bits & 0x1:
        raise Task2VecError(f"{entry} is encrypted; zip the task without a password")
    if info.file_size > _RATIO_MIN_BYTES and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
        raise Task2VecError(
            f"suspicious {entry}: compressed {info.compress_size:,} -> {info.file_size:,} bytes, "
            f"more than {MAX_ZIP_RATIO}:1 (precompute.tasks.MAX_ZIP_RATIO; possible zip bomb)"
        )


# --------------------------------------------------------------------------- CSV


def csv_items(csv_path: Path, *, tasks: bool = False) -> list[Item]:
    """One item per CSV row; relative paths are relative to the CSV's folder.

    ``tasks=True`` reads a user library's manifest: a ``task`` column too, and an optional
    ``taxonomy`` (levels joined by ``/``); each task then passes the class-count checks."""
    shown = shown_name(csv_path)
    base = csv_path.parent
    needed = ("path", "label", "task") if tasks else ("path", "label")
    columns = "path,label,task[,taxonomy]" if tasks else "path,label"
    items: list[Item] = []
    missing: list[str] = []
    try:
        # utf-8-sig: spreadsheet programs put a byte-order mark in front of the header.
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise Task2VecError(f"CSV {shown} is empty; it needs a header row: {columns}")
            header = [(c or "").strip() for c in reader.fieldnames]
            reader.fieldnames = header
            for column in needed:
                if column not in header:
                    raise Task2VecError(
                        f"CSV {shown} has no '{column}' column (header: {', '.join(header)}); "
                        f"it needs the columns {columns}"
                    )
            for row in reader:
                where = f"CSV {shown} line {reader.line_num}"
                path_text = (row["path"] or "").strip()
                label = (row["label"] or "").strip()
                task = (row.get("task") or "").strip()
                if not path_text:
                    raise Task2VecError(f"{where}: empty path; give an image path in every row")
                if not label:
                    raise Task2VecError(f"{where}: empty label for {path_text}; give every row a label")
                if tasks and not task:
                    raise Task2VecError(f"{where}: empty task for {path_text}; give every row a task")
                for what, text in (("label", label), ("task", task)):
                    if not text.isprintable():
                        raise Task2VecError(f"{where}: the {what} {shown_name(text)[:40]} holds a "
                                            "line break or control character (an unterminated quote?)")
                full = Path(path_text) if os.path.isabs(path_text) else base / path_text
                if not full.is_file():
                    missing.append(f"{where}: file not found: {shown_name(path_text)}")
                elif not _is_image_name(path_text):
                    raise Task2VecError(f"{where}: not an image: {shown_name(path_text)}")
                else:
                    taxonomy = tuple(t.strip() for t in (row.get("taxonomy") or "").split("/")
                                     if t.strip()) if tasks else ()
                    items.append(Item(str(full), shown_name(path_text), label, task, taxonomy))
    except UnicodeDecodeError:
        raise Task2VecError(f"CSV {shown} is not UTF-8 text; save it as UTF-8") from None
    except csv.Error as exc:
        raise Task2VecError(f"CSV {shown} is malformed: {exc}") from None
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise Task2VecError(
            f"{missing[0]}{more}; paths are relative to the CSV's folder {shown_name(base)}"
        )
    if not items:
        raise Task2VecError(f"CSV {shown} has a header but no rows; add one row per image")
    for task in sorted({item.task for item in items}):
        counts = Counter(item.label for item in items if item.task == task)
        classes = sorted(counts)
        check_class_counts(classes, [counts[c] for c in classes],
                           where=f"task {task} of CSV {shown}" if tasks else f"CSV {shown}")
    return items


# --------------------------------------------------------------------------- shared checks


def _build(name: str, items: list[Item], size: int, progress: bool, source: str) -> TaskData:
    """Items (already validated) -> TaskData, classes sorted by name."""
    classes = sorted({item.label for item in items})
    index = {c: i for i, c in enumerate(classes)}
    images = _decode_all([(i.path, i.shown) for i in items], size, progress, desc=f"loading {name}")
    return TaskData(
        name=name,
        images=images,
        labels=torch.tensor([index[i.label] for i in items], dtype=torch.int64),
        classes=classes,
        source=source,
    )


def check_class_counts(classes: list[str], counts: list[int], where: str) -> None:
    """The checks every task passes: some images, 2..MAX_CLASSES classes, 2+ images each."""
    if sum(counts) == 0:
        raise Task2VecError(f"no images found in {where}")
    if len(classes) > MAX_CLASSES:
        raise Task2VecError(
            f"{where} has {len(classes):,} classes, over the limit of {MAX_CLASSES:,} "
            "(precompute.tasks.MAX_CLASSES); split it into several tasks"
        )
    if len(classes) < 2:
        raise Task2VecError(f"a task needs at least 2 classes; found only '{classes[0]}' in {where}")
    small = [(c, n) for c, n in zip(classes, counts) if n < 2]
    if small:
        cls, n = small[0]
        more = f" (and {len(small) - 1} more such classes)" if len(small) > 1 else ""
        raise Task2VecError(
            f"class '{cls}' has {n} image{'' if n == 1 else 's'}; each class needs at least 2 "
            f"(in {where}){more}"
        )


def _check_input_size(input_size: object) -> int:
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or input_size < 1:
        raise Task2VecError(f"input_size must be a positive whole number of pixels, got {input_size!r}")
    return int(input_size)


def _images_to_nhwc_uint8(images: object) -> np.ndarray:
    """uint8 or [0, 1] float array/tensor, [N,H,W] / [N,H,W,3] / [N,3,H,W] -> uint8 [N,H,W,C]."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise Task2VecError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[..., None]
    elif images.ndim == 4 and images.shape[1] == 3:
        images = images.transpose(0, 2, 3, 1)
    elif not (images.ndim == 4 and images.shape[-1] == 3):
        raise Task2VecError(
            f"images have shape {list(images.shape)}; expected [N, H, W], [N, H, W, 3] or [N, 3, H, W]"
        )
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise Task2VecError(f"images have shape {list(images.shape)}: no pixels to use")
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise Task2VecError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
    low, high = float(np.min(images)), float(np.max(images))
    if not (low >= -1e-3 and high <= 1 + 1e-3):  # also false for NaN
        raise Task2VecError(
            f"float images must lie in [0, 1], found values in [{low:g}, {high:g}]; "
            "divide 0..255 data by 255"
        )
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _labels_to_list(labels: object) -> list:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise Task2VecError(f"labels must be 1-D (one per image), got shape {list(labels.shape)}")
        return labels.tolist()  # numpy scalars -> Python values, so str() reads naturally
    if isinstance(labels, (str, bytes)):
        raise Task2VecError("labels must be a sequence with one label per image, got a single string")
    try:
        return list(labels)  # lists, tuples, pandas Series, ...
    except TypeError:
        raise Task2VecError(
            f"labels must be a sequence with one label per image, got {type(labels).__name__}"
        ) from None


def shown_name(name: str | os.PathLike) -> str:
    """A file name safe for a one-line message: undecodable bytes and control characters escaped."""
    text = os.fspath(name)
    # Non-UTF-8 names arrive from os.scandir as surrogate escapes, which cannot be printed.
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
