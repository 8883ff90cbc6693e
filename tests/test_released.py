"""Released weights by name: download from a server started here (no internet), verify, cache, reuse offline."""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import documentation, shared_path

import atbsn
from atbsn import released
from atbsn.cli import main
from atbsn.errors import AtbsnError
from atbsn.students import Student


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ARG002
        pass


@pytest.fixture
def server(tmp_path):
    """A file server on 127.0.0.1 laid out like GitHub: /<repo>/raw/<commit>/<path>."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _publish(root: Path, entry: released.Entry, src: Path) -> None:
    dst = root / entry.repo / "raw" / entry.commit / entry.path
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


@pytest.fixture
def tiny(tmp_path, monkeypatch, server):
    """A registry of one small student (and one row whose hash is wrong), served by ``server``."""
    root, url = server
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model_state_dict": Student("C102", width=4).state_dict()}, ckpt)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    good = released.Entry(name="tiny", what="a test student", repo="me/tiny", commit="a" * 40, path="w/tiny.pth",
                          git_blob=released.git_blob_id(ckpt), sha256=sha, kind="student", arch="C102",
                          value_range=1, trained_on="nothing", reported=None, licence="test")
    blob_only = replace(good, name="blobonly", sha256=None, git_blob="0" * 40, path="w/blobonly.pth")
    bad_sha = replace(good, name="badsha", sha256="f" * 64, path="w/badsha.pth")
    for e in (good, blob_only, bad_sha):
        _publish(root, e, ckpt)
    monkeypatch.setattr(released, "entries", lambda: {e.name: e for e in (good, blob_only, bad_sha)})
    monkeypatch.setenv("ATBSN_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ATBSN_REGISTRY_URL", url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a proxy in the environment must not see the test server
    return tmp_path / "cache", root


def test_a_name_downloads_verifies_caches_and_then_works_offline(tiny, monkeypatch):
    cache, root = tiny
    model = atbsn.load("tiny", progress=False)
    assert model.config.arch == "C102" and model.config.training["released"] == "tiny"
    assert [p.name for p in cache.iterdir()] == [released.entries()["tiny"].filename]
    shutil.rmtree(root)  # the server has nothing any more: a second load must not need it
    monkeypatch.setenv("ATBSN_REGISTRY_URL", "http://127.0.0.1:9")
    again = atbsn.load("tiny", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("name", ["blobonly", "badsha"])
def test_a_file_that_fails_verification_is_refused_and_not_kept(tiny, name):
    cache, _ = tiny
    with pytest.raises(AtbsnError, match=f"{name}: downloaded file fails verification"):
        atbsn.load(name, progress=False)
    assert not cache.exists() or not [p for p in cache.iterdir() if p.is_file()]


def test_a_corrupted_cached_file_is_refused(tiny):
    cache, _ = tiny
    path = released.fetch("tiny", progress=False)
    path.write_bytes(path.read_bytes()[:-10] + b"\0" * 10)
    with pytest.raises(AtbsnError, match="fails verification"):
        atbsn.load("tiny", progress=False)
    assert not path.exists()


def test_unknown_names_and_failed_downloads_are_one_line(tiny, monkeypatch, capsys):
    assert main(["info", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-model" in err and "tiny" in err
    monkeypatch.setenv("ATBSN_REGISTRY_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(AtbsnError, match="tiny: download from http://127.0.0.1:9/me/tiny/raw/.* failed"):
        atbsn.load("tiny", progress=False)


def test_models_lists_every_entry_and_whether_it_is_cached(tiny, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "blobonly" in out and "no" in out
    released.fetch("tiny", progress=False)
    assert main(["models"]) == 0
    assert "yes" in capsys.readouterr().out


def test_names_work_wherever_a_model_is_taken(tiny, tmp_path):
    import numpy as np

    from atbsn.images import write_image

    write_image(tmp_path / "in" / "a.png", np.full((20, 30, 3), 90, np.uint8))
    assert main(["denoise", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "tiny", "-q"]) == 0
    assert (tmp_path / "out" / "a.png").exists()


def test_the_table_matches_the_released_files_we_hold():
    """Every released file in the test data has its row: same git blob id and sha256."""
    folder = shared_path("fixtures", "pretrained")
    rows = {e.git_blob: e for e in released.entries().values()}
    for name in ("aprrd_student_c_sidd_medium.pth", "aprrd_student_c102_sidd_medium.pth", "tmbsn_nbsn102_sidd.pth"):
        path = folder / name
        entry = rows[released.git_blob_id(path)]
        assert entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert atbsn.load(path).config.arch == entry.arch


def test_every_row_is_complete_and_pinned():
    for e in released.entries().values():
        assert len(e.commit) == 40 and len(e.git_blob) == 40 and e.kind in ("teacher", "student", "bundle")
        assert e.url().startswith(f"https://github.com/{e.repo}/raw/{e.commit}/")


def test_every_sidd_benchmark_number_names_its_protocol():
    """The same model scores 0.5 to 1.4 dB higher on the Kaggle re-host than on the original SIDD server: a
    benchmark number without its protocol cannot be compared with anything."""
    root = Path(__file__).resolve().parents[1]
    texts = {**dict(documentation()), "models.json": (root / "src" / "atbsn" / "models.json").read_text()}
    for name, text in texts.items():
        for m in re.finditer(r"\d\d\.\d\d (?:dB )?SIDD benchmark", text):
            after = text[m.end(): m.end() + 40]
            assert "original server" in after or "Kaggle" in after, f"{name}: {m.group(0)}{after}"


def test_the_page_shows_a_download_s_progress(tiny):
    """``atbsn ui`` loads a released name through the same verified download, its progress in the page's job."""
    from atbsn.ui import App, Job

    app, job = App(), Job("j", "denoise")
    try:
        model = app.model("tiny", "auto", job)
    finally:
        app.close()
    size = (tiny[0] / released.entries()["tiny"].filename).stat().st_size
    assert model.config.arch == "C102" and job.message.startswith("downloading tiny: ") and job.done == size
