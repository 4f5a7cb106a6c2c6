"""The upload page under AppTest, through its real form: every upload works in a private
temporary folder that is gone afterwards (good and bad uploads), and two sessions never see each
other's results."""
from __future__ import annotations

import tempfile

import pytest
from streamlit.testing.v1 import AppTest

from test_app import zip_of_class_folders

UPLOAD_PAGE = "explorer/pages/upload.py"


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """A private temp root for this test, and the folders the page creates in it."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    made = []
    real = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        path = real(*args, **kwargs)
        if "task2vec-upload-" in path:
            made.append(path)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return root, made


def upload_session(db) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.query_params["db"] = str(db)
    at.run()
    at.switch_page(UPLOAD_PAGE).run()
    assert not at.exception, at.exception
    return at


def submit(at: AppTest, filename: str, data: bytes, name: str) -> AppTest:
    at.get("file_uploader")[0].set_value((filename, data, "application/zip"))
    at.text_input(key="upload_name").set_value(name)
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


def leftovers(root) -> list[str]:
    """The upload's folders (and the zip reader's own) left in the temp root."""
    return sorted(p.name for p in root.glob("task2vec-*"))


def test_upload_folders_are_removed_after_good_and_bad_uploads(app_library, digits, temp_root):
    root, made = temp_root
    images, labels = digits
    at = upload_session(app_library)
    submit(at, "pairs.zip", zip_of_class_folders(images[300:360], labels[300:360], {3, 8}), "threes")
    assert at.subheader[0].value.startswith("threes:")
    assert len(made) == 1 and made[0].startswith(str(root)) and leftovers(root) == []
    # a bad upload (one class): the reader's message, and its folder is gone as well
    submit(at, "one.zip", zip_of_class_folders(images[:100], labels[:100], {3}), "one class")
    assert at.error and "class" in at.error[0].value
    assert len(made) == 2 and leftovers(root) == []
    # a file that is not a zip at all
    submit(at, "broken.zip", b"PK not really", "broken")
    assert at.error
    assert len(made) == 3 and leftovers(root) == []


def test_two_sessions_never_see_each_others_uploads(app_library, digits, temp_root):
    root, _ = temp_root
    images, labels = digits
    first, second = upload_session(app_library), upload_session(app_library)
    submit(first, "a.zip", zip_of_class_folders(images[300:360], labels[300:360], {3, 8}), "session one")
    second.run()
    assert not second.subheader and "upload" not in second.session_state
    submit(second, "b.zip", zip_of_class_folders(images[400:460], labels[400:460], {1, 7}), "session two")
    first.run()
    assert first.subheader[0].value.startswith("session one:")
    assert second.subheader[0].value.startswith("session two:")
    assert first.session_state["upload"]["classes"] == ["3", "8"]
    assert second.session_state["upload"]["classes"] == ["1", "7"]
    assert leftovers(root) == []
