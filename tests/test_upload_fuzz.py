"""A corpus of hostile and malformed uploads: each gives one clear message, nothing else.

Every case goes through what the app's upload panel does before any embedding:
``explorer.upload.save_uploads`` (the browser's files into a private folder) and
``precompute.tasks.load_task`` (validation and decoding). A case passes when it raises the
project's error type with a one-line message that names the problem, and leaves no file behind
outside the private folder. Valid images in unusual formats must load instead.
"""
from __future__ import annotations

import io
import stat
import zipfile

import numpy as np
import pytest
from PIL import Image

from explorer.upload import save_uploads
from precompute import tasks
from precompute.errors import Task2VecError

SIZE = 32


def png(seed: int = 0, mode: str = "RGB", side: int = 12) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg(seed: int = 0, mode: str = "RGB", exif_orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (10, 16, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    img.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def zip_of(entries: dict[str, bytes], *, mutate=None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mutate:
                mutate(info)
            z.writestr(info, data)
    return buf.getvalue()


def good_classes(n_classes: int = 2, per_class: int = 3, prefix: str = "task/") -> dict[str, bytes]:
    return {f"{prefix}c{c}/{i}.png": png(10 * c + i) for c in range(n_classes) for i in range(per_class)}


def csv_upload(text: str | bytes, images: dict[str, bytes] | None = None) -> list[tuple[str, bytes]]:
    data = text.encode() if isinstance(text, str) else text
    images = {f"{i}.png": png(i) for i in range(4)} if images is None else images
    return [("labels.csv", data)] + list(images.items())


def _symlink(info: zipfile.ZipInfo) -> None:
    info.external_attr = (stat.S_IFLNK | 0o777) << 16


def _encrypted(good: bytes) -> bytes:
    """Set the 'encrypted' flag bit in every local and central header (zipfile clears it)."""
    data = bytearray(good)
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (at := data.find(signature, start)) >= 0:
            data[at + flag_offset] |= 0x1
            start = at + 4
    return bytes(data)


def _bad_crc(good: bytes) -> bytes:
    """Flip a byte of the first member's data so its CRC no longer matches."""
    data = bytearray(good)
    header_end = 30 + int.from_bytes(data[26:28], "little") + int.from_bytes(data[28:30], "little")
    data[header_end + 2] ^= 0xFF
    return bytes(data)


def _huge_png() -> bytes:
    """A small file that declares 20,000 x 20,000 pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG")
    return buf.getvalue()


def _nested_zip() -> bytes:
    inner = zip_of(good_classes())
    return zip_of({"task/inner.zip": inner})


def _zip_with_non_utf8_names() -> bytes:
    """Entry names in cp437 bytes without the UTF-8 flag, as old Windows zippers write them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for c, cls in enumerate(["caf\u00e9", "na\u00efve"]):
            for i in range(3):
                z.writestr(f"task/{cls}/{i}.png", png(c * 10 + i))
    return buf.getvalue()


CSV_HEADER = "path,label\n"
ROWS = "0.png,a\n1.png,a\n2.png,b\n3.png,b\n"

# (case id, uploaded files, phrase the message must contain)
CASES: list[tuple[str, list[tuple[str, bytes]], str]] = [
    ("no files", [], "no files"),
    ("random bytes as zip", [("t.zip", b"not a zip at all")], "cannot open zip"),
    ("truncated zip", [("t.zip", zip_of(good_classes())[:200])], "zip"),
    ("empty zip", [("t.zip", zip_of({}))], "no"),
    ("path traversal", [("t.zip", zip_of({"../evil/a.png": png()}))], "'..'"),
    ("deep traversal", [("t.zip", zip_of({"task/c0/../../../x.png": png()}))], "'..'"),
    ("backslash traversal", [("t.zip", zip_of({"..\\evil.png": png()}))], "'..'"),
    ("absolute path", [("t.zip", zip_of({"/etc/cron.d/x.png": png()}))], "absolute path"),
    ("windows absolute path", [("t.zip", zip_of({"C:/x/a.png": png()}))], "absolute path"),
    ("symbolic link", [("t.zip", zip_of({"task/c0/link.png": b"/etc/passwd"}, mutate=_symlink))],
     "symbolic link"),
    ("encrypted entry", [("t.zip", _encrypted(zip_of(good_classes())))], "encrypted"),
    ("zip bomb member", [("t.zip", zip_of({"task/c0/a.png": bytes(50_000_000)}))], "zip bomb"),
    ("bad crc", [("t.zip", _bad_crc(zip_of({"task/c0/a.png": png(1) * 50})))], "cannot extract"),
    ("nested zip only", [("t.zip", _nested_zip())], "no"),
    ("single class", [("t.zip", zip_of(good_classes(1)))], "class"),
    ("class with one image", [("t.zip", zip_of({"task/a/1.png": png(1), "task/a/2.png": png(2),
                                                 "task/b/1.png": png(3)}))], "b"),
    ("empty class folders", [("t.zip", zip_of({"task/a/": b"", "task/b/": b""}))], "no"),
    ("only text files", [("t.zip", zip_of({"task/a/x.txt": b"hi", "task/b/y.txt": b"ho"}))], "no"),
    ("truncated png", [("t.zip", zip_of({**good_classes(), "task/c0/bad.png": png(5)[:60]}))],
     "bad.png"),
    ("garbage jpeg", [("t.zip", zip_of({**good_classes(), "task/c1/bad.jpg": b"\xff\xd8garbage"}))],
     "bad.jpg"),
    ("text renamed png", [("t.zip", zip_of({**good_classes(), "task/c1/notes.png": b"hello"}))],
     "notes.png"),
    ("zero-byte png", [("t.zip", zip_of({**good_classes(), "task/c0/empty.png": b""}))], "empty.png"),
    ("image outside classes", [("t.zip", zip_of({**good_classes(prefix=""), "stray.png": png()}))],
     "stray.png"),
    ("folder inside class", [("t.zip", zip_of({**good_classes(), "task/c0/sub/x.png": png()}))],
     "sub"),
    ("decompression bomb", [("t.zip", zip_of({**good_classes(), "task/c0/huge.png": _huge_png()}))],
     "pixels"),
    ("zip with other files", [("t.zip", zip_of(good_classes())), ("x.png", png())], "not a zip"),
    ("two zips", [("a.zip", zip_of(good_classes())), ("b.zip", zip_of(good_classes()))], "zip"),
    ("hidden file name", [(".zip", zip_of(good_classes()))], "file name"),
    ("executable", [("run.exe", b"MZ\x90\x00"), ("labels.csv", b"path,label\n")], "run.exe"),
    ("images without csv", [(f"{i}.png", png(i)) for i in range(4)], ".csv"),
    ("two csvs", csv_upload(CSV_HEADER + ROWS) + [("more.csv", b"path,label\n")], ".csv"),
    ("csv without label column", csv_upload("path,class\n0.png,a\n"), "label"),
    ("csv without path column", csv_upload("file,label\n0.png,a\n"), "path"),
    ("csv empty", csv_upload(""), "path"),
    ("csv header only", csv_upload(CSV_HEADER), "no rows"),
    ("csv not utf-8", csv_upload("path,label\n0.png,caf\u00e9\n".encode("utf-16")), "UTF-8"),
    ("csv latin-1", csv_upload("path,label\n0.png,caf\u00e9\n".encode("latin-1")), "UTF-8"),
    ("csv label without file", csv_upload(CSV_HEADER + ROWS + "9.png,b\n"), "9.png"),
    ("csv all files missing", csv_upload(CSV_HEADER + ROWS, images={}), "not found"),
    ("csv empty label", csv_upload(CSV_HEADER + "0.png,\n1.png,a\n"), "empty label"),
    ("csv empty path", csv_upload(CSV_HEADER + ROWS + ",a\n"), "empty path"),
    ("csv one class", csv_upload(CSV_HEADER + "0.png,a\n1.png,a\n2.png,a\n"), "class"),
    ("csv class with one image", csv_upload(CSV_HEADER + "0.png,a\n1.png,a\n2.png,b\n"), "b"),
    ("csv traversal path", csv_upload(CSV_HEADER + "../../etc/passwd,a\n0.png,a\n1.png,b\n2.png,b\n"),
     "passwd"),
    ("csv names a text file", csv_upload(CSV_HEADER + ROWS, images={"0.png": png(0), "1.png": png(1),
                                                                     "2.png": png(2), "3.txt": b"x"}),
     "3.txt"),
    ("csv nul bytes", csv_upload(b"path,label\n0.png,a\x00b\n"), "CSV"),
    ("csv unterminated quote", csv_upload(CSV_HEADER + '0.png,"a\n1.png,a\n2.png,b\n3.png,b\n'), "line break"),
    ("duplicate names", csv_upload(CSV_HEADER + ROWS) + [("0.png", png(7))], "0.png"),
    ("truncated image via csv", csv_upload(CSV_HEADER + ROWS, images={
        "0.png": png(0)[:40], "1.png": png(1), "2.png": png(2), "3.png": png(3)}), "0.png"),
    ("too many classes", [("t.zip", zip_of({f"task/k{c}/{i}.png": png(i) for c in range(12)
                                            for i in range(2)}))], "classes"),
    ("too many entries", [("t.zip", zip_of({f"task/c{i % 2}/{i}.png": png(i) for i in range(30)}))],
     "entries"),
    ("too large in total", [("t.zip", zip_of({f"task/c{i % 2}/{i}.png": png(i, side=64)
                                              for i in range(8)}))], "bytes"),
]


@pytest.fixture
def small_limits(monkeypatch):
    """Limits lowered so that the 'too many' cases stay small (the code paths are the same)."""
    monkeypatch.setattr(tasks, "MAX_CLASSES", 10)
    monkeypatch.setattr(tasks, "MAX_ZIP_MEMBERS", 26)
    monkeypatch.setattr(tasks, "MAX_ZIP_BYTES", 60_000)


def upload(files, folder):
    path = save_uploads(files, folder)
    return tasks.load_task(path, input_size=SIZE)


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 50
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case, files, phrase", CASES, ids=[c[0] for c in CASES])
def test_malformed_upload_gives_one_clear_message(case, files, phrase, tmp_path, small_limits):
    folder = tmp_path / "session"
    folder.mkdir()
    outside = set(tmp_path.parent.iterdir())
    with pytest.raises(Task2VecError) as info:
        upload(files, folder)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and len(message) < 400
    assert phrase.lower() in message.lower(), message
    # nothing escaped the private folder (traversal, links, extraction left-overs)
    assert set(tmp_path.parent.iterdir()) == outside
    assert {p.name for p in tmp_path.iterdir()} == {"session"}


def test_non_utf8_zip_names_are_read(tmp_path):
    folder = tmp_path / "session"
    folder.mkdir()
    task = upload([("t.zip", _zip_with_non_utf8_names())], folder)
    assert task.size == 6 and task.num_classes == 2


@pytest.mark.parametrize("kind", ["16-bit", "cmyk", "palette", "alpha", "la", "1-bit", "exif-rotated"])
def test_unusual_image_modes_load_as_rgb(kind, tmp_path):
    if kind == "16-bit":
        buf = io.BytesIO()
        Image.fromarray(np.arange(144, dtype=np.uint16).reshape(12, 12) * 400).save(buf, format="PNG")
        odd = buf.getvalue()
    elif kind == "cmyk":
        odd = jpeg(1, "CMYK")
    elif kind == "exif-rotated":
        odd = jpeg(1, exif_orientation=6)  # stored 16 wide x 10 high, shown rotated
    else:
        odd = png(1, {"palette": "P", "alpha": "RGBA", "la": "LA", "1-bit": "1"}[kind])
    ext = "jpg" if kind in ("cmyk", "exif-rotated") else "png"
    files = {**good_classes(), f"task/c0/odd.{ext}": odd}
    folder = tmp_path / "session"
    folder.mkdir()
    task = upload([("t.zip", zip_of(files))], folder)
    assert task.size == 7 and tuple(task.images.shape[1:]) == (3, SIZE, SIZE)


def test_no_code_path_unpickles():
    """Nothing user-supplied may be unpickled: every loader is called in its safe mode."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sources = [*root.glob("precompute/**/*.py"), *root.glob("explorer/**/*.py"), root / "app.py"]
    loads = 0
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "joblib", "cloudpickle"} & set(names), path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                kwargs = {k.arg: k.value for k in node.keywords}
                owner = getattr(node.func.value, "id", "")
                if (owner, node.func.attr) == ("torch", "load"):
                    loads += 1
                    assert getattr(kwargs.get("weights_only"), "value", None) is True, path
                if (owner, node.func.attr) == ("np", "load"):
                    loads += 1
                    assert getattr(kwargs.get("allow_pickle"), "value", None) is False, path
    assert loads >= 3  # the scan sees the loaders that exist
