"""Tests for precompute.tasks: folder, zip, CSV and array readers, decoding and validation."""
from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from precompute import tasks

from conftest import expect_error
from precompute.tasks import TaskData, load_task, task_from_arrays

RNG_SEED = 0


# --------------------------------------------------------------------------- helpers


def make_folder(root: Path, counts: dict[str, int], side: int = 16, seed: int = RNG_SEED) -> Path:
    """root/<class>/<i>.png with random colours; returns root."""
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def zip_folder(folder: Path, zip_path: Path, arc_root: str = "") -> Path:
    """Zip every file under ``folder``, stored under ``arc_root/`` inside the archive."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, os.path.join(arc_root, file.relative_to(folder).as_posix()))
    return zip_path



def load_single(tmp_path: Path, image: Image.Image, filename: str, input_size: int = 16,
                **save_kwargs) -> np.ndarray:
    """Save ``image`` as the first file of a valid 2-class task; return it decoded, int [S, S, 3]."""
    root = tmp_path / "single"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    image.save(root / "a" / filename, **save_kwargs)
    filler = Image.new("RGB", (16, 16), (1, 2, 3))
    for path in (root / "a" / "z_filler.png", root / "b" / "1.png", root / "b" / "2.png"):
        filler.save(path)
    task = load_task(root, input_size=input_size)
    return task.images[0].permute(1, 2, 0).numpy().astype(int)


def assert_same_task(a: TaskData, b: TaskData) -> None:
    assert a.classes == b.classes
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.images, b.images)


# --------------------------------------------------------------------------- folders


def test_folder_classes_sorted_counts_and_shapes(tmp_path):
    root = make_folder(tmp_path / "animals", {"zebra": 3, "ant": 2, "cat": 4})
    task = load_task(root, input_size=8)

    assert task.name == "animals"
    assert task.source == str(root)
    assert task.classes == ["ant", "cat", "zebra"]
    assert task.num_classes == 3 and task.size == 9
    assert task.class_counts() == [2, 4, 3]
    assert task.labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert task.labels.dtype == torch.int64
    assert task.images.shape == (9, 3, 8, 8) and task.images.dtype == torch.uint8
    assert "size=9" in repr(task)


def test_folder_pixels_match_the_file(tmp_path):
    root = make_folder(tmp_path / "t", {"a": 2, "b": 2})
    task = load_task(root, input_size=16, name="given")
    with Image.open(root / "a" / "0.png") as image:
        original = np.asarray(image)  # [16, 16, 3], same size: no resampling
    assert task.name == "given"
    assert np.array_equal(task.images[0].permute(1, 2, 0).numpy(), original)


def test_non_square_image_is_squashed_not_cropped(tmp_path):
    # 32 wide x 16 tall: left half red, right half blue. A squash keeps both halves side by side.
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :16] = (255, 0, 0)
    pixels[:, 16:] = (0, 0, 255)
    out = load_single(tmp_path, Image.fromarray(pixels), "wide.png", input_size=8)
    assert np.array_equal(out[:, :3], np.broadcast_to([255, 0, 0], (8, 3, 3)))
    assert np.array_equal(out[:, 5:], np.broadcast_to([0, 0, 255], (8, 3, 3)))


def test_hidden_files_and_macosx_are_ignored(tmp_path):
    root = make_folder(tmp_path / "t", {"a": 2, "b": 2})
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "a" / ".hidden.txt").write_text("x")
    (root / "a" / "._0.png").write_bytes(b"AppleDouble")
    (root / "__MACOSX" / "a").mkdir(parents=True)
    (root / "__MACOSX" / "a" / "._0.png").write_bytes(b"AppleDouble")
    (root / "README.txt").write_text("non-image files next to the class folders are fine")
    task = load_task(root, input_size=8)
    assert task.classes == ["a", "b"] and task.class_counts() == [2, 2]


def test_single_wrapper_folder_is_descended(tmp_path):
    flat = make_folder(tmp_path / "flat", {"a": 2, "b": 3})
    make_folder(tmp_path / "outer" / "inner", {"a": 2, "b": 3})
    task = load_task(tmp_path / "outer", input_size=8)
    assert task.name == "outer"
    assert_same_task(task, load_task(flat, input_size=8))


def test_non_utf8_file_names_load(tmp_path):
    root = make_folder(tmp_path / "t", {"a": 2})
    odd_class = os.path.join(os.fsencode(root), b"caf\xe9")
    os.mkdir(odd_class)
    for name in (b"\xff1.png", b"\xff2.png"):
        Image.new("RGB", (16, 16), (9, 9, 9)).save(os.path.join(odd_class, name), format="PNG")
    task = load_task(root, input_size=8)
    assert task.classes == ["a", "caf\ufffd"]
    assert task.class_counts() == [2, 2]


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    root = make_folder(tmp_path / "t", {"a": 2, "b": 2})
    load_task(root, input_size=8, progress=True)
    assert "loading t" in capsys.readouterr().err


# --------------------------------------------------------------------------- image modes


@pytest.mark.parametrize(
    "mode, filename",
    [("I;16", "deep.png"), ("I;16B", "deep.tif"), ("I", "deep.tif"), ("F", "deep.tif")],
)
def test_high_bit_depth_grey_is_scaled_by_its_max(tmp_path, mode, filename):
    values = np.full((16, 16), 2000)
    values[0, 0] = 4000  # the maximum: must become 255, and 2000 about half of it
    values[0, 1] = 0
    dtype = {"I;16": np.uint16, "I;16B": ">u2", "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray(values.astype(dtype))
    assert image.mode == mode
    out = load_single(tmp_path, image, filename)
    with Image.open(tmp_path / "single" / "a" / filename) as saved:
        assert saved.mode == mode  # the file really is in that mode
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 0]
    assert out[5, 5].tolist() == [128, 128, 128]  # 2000 / 4000 * 255 = 127.5, not clipped to 255


def test_rgba_transparent_pixels_become_white(tmp_path):
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)  # transparent black
    pixels[:, 8:] = (200, 30, 40, 255)
    pixels[0, 8] = (200, 30, 40, 128)  # half transparent: halfway to white
    out = load_single(tmp_path, Image.fromarray(pixels, "RGBA"), "alpha.png")
    assert out[5, 2].tolist() == [255, 255, 255]
    assert out[5, 12].tolist() == [200, 30, 40]
    assert np.abs(out[0, 8] - [228, 142, 147]).max() <= 1


def test_la_is_composited_onto_white(tmp_path):
    pixels = np.zeros((16, 16, 2), dtype=np.uint8)
    pixels[:, 8:] = (100, 255)
    out = load_single(tmp_path, Image.fromarray(pixels, "LA"), "grey_alpha.png")
    assert out[3, 3].tolist() == [255, 255, 255]
    assert out[3, 12].tolist() == [100, 100, 100]


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    image.paste(1, (8, 0, 16, 16))
    out = load_single(tmp_path, image, "palette.png", transparency=0)
    assert out[4, 4].tolist() == [255, 255, 255]  # index 0 is transparent, not black
    assert out[4, 12].tolist() == [0, 200, 0]


@pytest.mark.parametrize("filename", ["cmyk.tif", "cmyk.jpg"])
def test_cmyk_colours(tmp_path, filename):
    image = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    image.paste((255, 0, 0, 0), (8, 0, 16, 16))  # cyan
    out = load_single(tmp_path, image, filename, quality=95)
    assert np.abs(out[8, 2] - [255, 0, 0]).max() <= 10
    assert np.abs(out[8, 13] - [0, 255, 255]).max() <= 10


def test_one_bit_image(tmp_path):
    image = Image.new("1", (16, 16), 0)
    image.paste(1, (0, 0, 8, 16))
    out = load_single(tmp_path, image, "bits.bmp")
    assert out[4, 2].tolist() == [255, 255, 255]
    assert out[4, 12].tolist() == [0, 0, 0]


def test_exif_orientation_is_applied(tmp_path):
    # 40 wide x 20 tall, red top-left corner. Orientation 6 = "rotate 90 degrees clockwise to
    # view", which moves the top-left corner to the top-right.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:] = (0, 0, 255)
    pixels[:8, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_single(tmp_path, Image.fromarray(pixels), "photo.jpg", quality=95,
                      exif=exif.tobytes())
    top_right, top_left = out[1, 14], out[1, 1]
    assert top_right[0] > 200 and top_right[2] < 60
    assert top_left[0] < 60 and top_left[2] > 200


# --------------------------------------------------------------------------- zip and CSV


def test_zip_with_wrapper_folder_equals_folder(tmp_path):
    folder = make_folder(tmp_path / "animals", {"dog": 2, "cat": 3})
    archive = zip_folder(folder, tmp_path / "animals.zip", arc_root="animals")
    zipped = load_task(archive, input_size=8)
    assert zipped.name == "animals" and zipped.source == str(archive)
    assert_same_task(zipped, load_task(folder, input_size=8))


def test_zip_leaves_no_temporary_folder(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    folder = make_folder(tmp_path / "t", {"a": 2, "b": 2})
    good = zip_folder(folder, tmp_path / "good.zip")
    load_task(good, input_size=8)
    assert list(scratch.iterdir()) == []

    # Fails while decoding, i.e. after extraction.
    (folder / "b" / "broken.png").write_bytes((folder / "a" / "0.png").read_bytes()[:100])
    bad = zip_folder(folder, tmp_path / "bad.zip")
    expect_error(lambda: load_task(bad, input_size=8), "broken.png")
    assert list(scratch.iterdir()) == []


def test_zip_error_names_the_archive_not_the_temporary_folder(tmp_path):
    folder = make_folder(tmp_path / "t", {"a": 2, "b": 2})
    (folder / "a" / "notes.txt").write_text("hi")
    archive = zip_folder(folder, tmp_path / "task.zip")
    expect_error(lambda: load_task(archive, input_size=8), "not an image", "task.zip/a/notes.txt")


def test_csv_with_extra_columns(tmp_path):
    make_folder(tmp_path / "imgs", {"x": 2, "y": 2})
    absolute = tmp_path / "imgs" / "y" / "1.png"
    (tmp_path / "task.csv").write_text(
        "split,path,label,note\n"
        "train,imgs/x/0.png,dog,a\n"
        "train,imgs/y/0.png,cat,b\n"
        f"test,{absolute},cat,c\n"
        "test,imgs/x/1.png,dog,\n"
    )
    task = load_task(tmp_path / "task.csv", input_size=16)
    assert task.name == "task"
    assert task.classes == ["cat", "dog"]
    assert task.labels.tolist() == [1, 0, 0, 1]
    with Image.open(absolute) as image:
        expected = np.asarray(image)
    assert np.array_equal(task.images[2].permute(1, 2, 0).numpy(), expected)


# --------------------------------------------------------------------------- arrays


def test_arrays_nhwc_uint8_with_string_labels(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    task = task_from_arrays(images, ["dog", "cat", "dog", "cat"], input_size=8, name="pets")
    assert task.classes == ["cat", "dog"]
    assert task.labels.tolist() == [1, 0, 1, 0]
    assert task.source == "<memory>" and task.name == "pets"
    assert np.array_equal(task.images.permute(0, 2, 3, 1).numpy(), images)


def test_arrays_nchw_float_resized_with_class_names():
    images = torch.full((4, 3, 10, 6), 0.5)
    task = task_from_arrays(images, torch.tensor([3, 1, 1, 3]), input_size=4,
                            class_names=["one", "three"])
    assert task.images.shape == (4, 3, 4, 4) and task.images.dtype == torch.uint8
    assert (task.images == 128).all()
    assert task.classes == ["one", "three"]
    assert task.labels.tolist() == [1, 0, 0, 1]


def test_arrays_grayscale_becomes_three_equal_channels():
    images = np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6)
    task = task_from_arrays(images, np.array([0, 0, 1, 1]), input_size=3)
    assert task.images.shape == (4, 3, 3, 3)
    assert torch.equal(task.images[:, 0], task.images[:, 2])
    assert task.classes == ["0", "1"]


# --------------------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    expect_error(lambda: load_task(tmp_path / "nope", input_size=8), "no such file or folder", "nope")


def test_unsupported_file_type(tmp_path):
    (tmp_path / "task.txt").write_text("x")
    expect_error(lambda: load_task(tmp_path / "task.txt", input_size=8), "unsupported task file")


def test_bad_input_size(tmp_path):
    root = make_folder(tmp_path / "t", {"a": 2, "b": 2})
    expect_error(lambda: load_task(root, input_size=0), "input_size")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    expect_error(lambda: load_task(tmp_path / "empty", input_size=8), "no class folders")


def test_only_empty_class_folders(tmp_path):
    (tmp_path / "t" / "a").mkdir(parents=True)
    (tmp_path / "t" / "b").mkdir()
    expect_error(lambda: load_task(tmp_path / "t", input_size=8), "no images found")


def test_one_class(tmp_path):
    root = make_folder(tmp_path / "t", {"cat": 3})
    expect_error(lambda: load_task(root, input_size=8),
                 "a task needs at least 2 classes; found only 'cat'")


def test_class_with_one_image(tmp_path):
    root = make_folder(tmp_path / "t", {"cat": 3, "dog": 1})
    expect_error(lambda: load_task(root, input_size=8),
                 "class 'dog' has 1 image; each class needs at least 2")


def test_empty_class_folder(tmp_path):
    root = make_folder(tmp_path / "t", {"cat": 3, "dog": 2})
    (root / "empty").mkdir()
    expect_error(lambda: load_task(root, input_size=8), "class 'empty' has 0 images")


def test_text_file_in_class_folder(tmp_path):
    root = make_folder(tmp_path / "t", {"cat": 2, "dog": 2})
    (root / "dog" / "notes.txt").write_text("x")
    expect_error(lambda: load_task(root, input_size=8), "not an image", "dog/notes.txt")


def test_nested_folder_in_class_folder(tmp_path):
    root = make_folder(tmp_path / "t", {"cat": 2, "dog": 2})
    make_folder(root / "dog", {"puppies": 2})
    expect_error(lambda: load_task(root, input_size=8), "nested folder", "dog/puppies")


def test_image_outside_class_folders(tmp_path):
    root = make_folder(tmp_path / "t", {"cat": 2, "dog": 2})
    Image.new("RGB", (4, 4)).save(root / "stray.png")
    expect_error(lambda: load_task(root, input_size=8), "stray.png", "not inside a class folder")


def test_truncated_png(tmp_path):
    root = make_folder(tmp_path / "t", {"cat": 2, "dog": 2})
    (root / "dog" / "bad.png").write_bytes((root / "dog" / "0.png").read_bytes()[:200])
    expect_error(lambda: load_task(root, input_size=8), "cannot decode image", "dog/bad.png")


def test_garbage_with_image_extension(tmp_path):
    root = make_folder(tmp_path / "t", {"cat": 2, "dog": 2})
    (root / "dog" / "fake.jpg").write_bytes(b"this is not a jpeg")
    expect_error(lambda: load_task(root, input_size=8), "cannot read image", "dog/fake.jpg")


def test_image_over_pixel_limit(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "t", {"cat": 2, "dog": 2})
    monkeypatch.setattr(tasks, "MAX_IMAGE_PIXELS", 100)  # images are 16 x 16 = 256 pixels
    expect_error(lambda: load_task(root, input_size=8), "image too large", "cat/0.png")


@pytest.mark.parametrize("pil_limit", [50, 200])  # 256 px: over 2x the limit (error), over 1x (warning)
def test_pil_decompression_bomb_check_becomes_task_error(tmp_path, monkeypatch, pil_limit):
    root = make_folder(tmp_path / "t", {"cat": 2, "dog": 2})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
    expect_error(lambda: load_task(root, input_size=8), "image too large", "cat/0.png")


def _zip_with(tmp_path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    """A zip holding a valid 2-class task plus the given extra entries."""
    folder = make_folder(tmp_path / "t", {"cat": 2, "dog": 2})
    path = zip_folder(folder, tmp_path / "evil.zip")
    with zipfile.ZipFile(path, "a") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def test_zip_with_parent_path(tmp_path):
    path = _zip_with(tmp_path, [("../evil.png", b"x")])
    expect_error(lambda: load_task(path, input_size=8), "unsafe entry", "'..'")
    assert not (tmp_path / "evil.png").exists()


def test_zip_with_absolute_path(tmp_path):
    path = _zip_with(tmp_path, [(zipfile.ZipInfo("/tmp/evil.png"), b"x")])
    expect_error(lambda: load_task(path, input_size=8), "absolute path", "/tmp/evil.png")


def test_zip_with_symlink(tmp_path):
    link = zipfile.ZipInfo("cat/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    path = _zip_with(tmp_path, [(link, b"/etc/passwd")])
    expect_error(lambda: load_task(path, input_size=8), "symbolic link", "cat/link.png")


def test_zip_declared_size_over_limit(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "t", {"cat": 2, "dog": 2})
    path = zip_folder(folder, tmp_path / "big.zip")
    monkeypatch.setattr(tasks, "MAX_ZIP_BYTES", 1000)  # four 16x16 PNGs are about 3 kB
    expect_error(lambda: load_task(path, input_size=8), "would expand to", "MAX_ZIP_BYTES")


def test_zip_too_many_members(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "t", {"cat": 2, "dog": 2})
    path = zip_folder(folder, tmp_path / "many.zip")
    monkeypatch.setattr(tasks, "MAX_ZIP_MEMBERS", 3)
    expect_error(lambda: load_task(path, input_size=8), "has 4 entries")


def test_zip_member_with_bomb_ratio(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "_RATIO_MIN_BYTES", 0)
    folder = make_folder(tmp_path / "t", {"cat": 2, "dog": 2})
    (folder / "cat" / "zeros.bmp").write_bytes(bytes(100_000))  # deflates about 1000:1
    path = zip_folder(folder, tmp_path / "bomb.zip")
    expect_error(lambda: load_task(path, input_size=8), "possible zip bomb", "cat/zeros.bmp")


def test_nested_zip_is_not_an_image(tmp_path):
    path = _zip_with(tmp_path, [("cat/inner.zip", b"PK\x05\x06" + bytes(18))])
    expect_error(lambda: load_task(path, input_size=8), "not an image", "cat/inner.zip")


def test_corrupt_zip(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"not a zip at all")
    expect_error(lambda: load_task(tmp_path / "broken.zip", input_size=8), "cannot open zip archive")


def test_csv_missing_label_column(tmp_path):
    (tmp_path / "t.csv").write_text("path,class\na.png,x\n")
    expect_error(lambda: load_task(tmp_path / "t.csv", input_size=8), "no 'label' column")


def test_csv_row_with_missing_file(tmp_path):
    make_folder(tmp_path / "imgs", {"x": 2})
    (tmp_path / "t.csv").write_text("path,label\nimgs/x/0.png,a\nimgs/x/gone.png,a\n")
    expect_error(lambda: load_task(tmp_path / "t.csv", input_size=8),
                 "line 3", "file not found: imgs/x/gone.png")


def test_csv_empty_label(tmp_path):
    make_folder(tmp_path / "imgs", {"x": 2})
    (tmp_path / "t.csv").write_text("path,label\nimgs/x/0.png,\n")
    expect_error(lambda: load_task(tmp_path / "t.csv", input_size=8), "line 2", "empty label")


@pytest.mark.parametrize("text, phrase", [("", "is empty"), ("path,label\n", "no rows")])
def test_csv_without_rows(tmp_path, text, phrase):
    (tmp_path / "t.csv").write_text(text)
    expect_error(lambda: load_task(tmp_path / "t.csv", input_size=8), phrase)


def test_arrays_length_mismatch():
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    expect_error(lambda: task_from_arrays(images, [0, 0, 1], input_size=8),
                 "got 4 images but 3 labels")


@pytest.mark.parametrize(
    "images, phrase",
    [
        (np.zeros((4, 8, 8, 2), dtype=np.uint8), "expected [N, H, W]"),
        (np.full((4, 8, 8, 3), 255.0), "float images must lie in [0, 1]"),
        (np.zeros((4, 8, 8, 3), dtype=np.int64), "dtype int64"),
        ([[0]], "numpy array or torch tensor"),
    ],
)
def test_arrays_bad_images(images, phrase):
    expect_error(lambda: task_from_arrays(images, [0, 0, 1, 1], input_size=8), phrase)


def test_arrays_one_class_and_bad_class_names():
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    expect_error(lambda: task_from_arrays(images, ["a"] * 4, input_size=8), "found only 'a'")
    expect_error(lambda: task_from_arrays(images, [0, 0, 1, 1], input_size=8, class_names=["x"]),
                 "class_names has 1 names")
    expect_error(lambda: task_from_arrays(images, [0, "a", 1, 1], input_size=8), "sortable")


def test_too_many_classes(monkeypatch):
    monkeypatch.setattr(tasks, "MAX_CLASSES", 2)
    images = np.zeros((6, 4, 4, 3), dtype=np.uint8)
    expect_error(lambda: task_from_arrays(images, [0, 0, 1, 1, 2, 2], input_size=4),
                 "3 classes, over the limit of 2")
