"""The README and docs/ are executed: every command of their fenced blocks runs, the module map is the package.

Each ``atbsn ...`` line of a ```bash block runs through the CLI, in reading order (the README, then the site's
pages), in one workspace that holds tiny stand-ins for the files the commands name (photos, pairs, SIDD blocks, a
DND folder, teachers); a command that trains gets tiny sizes and steps appended (the documented options come
first, so their presets and methods are what start). The AT-BSN authors' and follow-up works' files come from
``../shared`` and released names from a cache filled with the verified files there; what needs the network is
skipped, naming the file. The ```python block runs too, and every ``make`` target named is run or checked here.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, doc_section, documentation, fake_dnd, make_clip, make_dng, make_heic
from scipy.io import savemat

import atbsn.ui
from atbsn import ATBSN
from atbsn.checkpoint import save
from atbsn.cli import main
from atbsn.images import write_image
from atbsn.noise import add_camera_noise
from atbsn.released import cached_path, entries

ROOT = Path(__file__).resolve().parents[1]
README = "\n\n".join(text for _, text in documentation())  # the README, then each page of docs/


def test_module_map_matches_the_package():
    section = doc_section("Module map")
    listed = set(re.findall(r"`([\w/]+\.(?:py|json))`", section)) - {"__init__.py", "__main__.py"}
    package = ROOT / "src" / "atbsn"
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py")} - {"__init__.py", "__main__.py"}
    assert modules - listed == set()  # every module is in the map, by its path
    names = {m.rsplit("/", 1)[-1] for m in modules}  # inside a subpackage's row, a file may be named alone
    stale = {x for x in listed if not (package / x).exists() and x not in names and not (ROOT / x).exists()}
    assert stale == set()  # nothing listed that is gone (tests named there are files of the repository)


def fenced(lang: str) -> list[str]:
    """The command lines of the README's fenced blocks in ``lang``: continuations joined, comments dropped."""
    lines = []
    for body in re.findall(rf"```{lang}\n(.*?)```", README, re.S):
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(re.sub(r"\s+", " ", line))
    return lines


COMMANDS = [c for c in fenced("bash") if c.startswith("atbsn ")]
MAKE_TARGETS = sorted(set(re.findall(r"`make ([a-z][\w-]*)`", README))
                      | {c.split()[1] for c in fenced("bash") if c.startswith("make ")})

# Tiny sizes appended to a command that trains, so that the README's recipes start and finish in seconds.
TINY_RUN = ["--steps", "2", "--batch", "2", "--crop", "20", "--val-limit", "1", "--val-every", "1", "--save-every", "1"]
TINY = {"train": [*TINY_RUN, "--width", "4"], "distill": TINY_RUN,
        "fit": ["--width", "4", "--crop", "20", "--batch", "2", "--teacher-steps", "2", "--student-steps", "2"],
        "ui": ["--port", "0"]}  # any free port; the test asks the page and stops the server
# The authors' and follow-up works' files the README names, and where the test data holds a file of that format.
AUTHORS_FILES = {
    "NBSN_SIDD_Medium.pth": ("fixtures", "pretrained", "aprrd_student_c_sidd_medium.pth"),
    "AT-BSN_D_SIDD.pth": ("fixtures", "official", "atbsn_d_official_format.pth"),
    "AT-BSN_SIDD.pth": ("fixtures", "official", "atbsn_official_format.pth"),
    "AP-BSN_SIDD.pth": ("fixtures", "apbsn", "apbsn_official_format.pth"),
    "TMBSN_SIDD.pth": ("fixtures", "tmbsn", "tmbsn_official_format.pth"),
}
# Released models whose files the test data holds (verified against the registry's sha256 before use).
CACHEABLE = {"tmbsn-c102-sidd": ("fixtures", "pretrained", "tmbsn_nbsn102_sidd.pth"),
             "aprrd-c-sidd": ("fixtures", "pretrained", "aprrd_student_c_sidd_medium.pth"),
             "aprrd-c102-sidd": ("fixtures", "pretrained", "aprrd_student_c102_sidd_medium.pth")}


def _noisy(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    clean = np.stack([128 + 60 * np.sin(xx / 7.0 + c) * np.cos(yy / 9.0) for c in range(3)], -1)
    clean = np.clip(clean + rng.normal(0, 4, clean.shape), 0, 255).astype(np.uint8)
    return add_camera_noise(clean, "phone-night", rng=int(rng.integers(1 << 30))), clean


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with a stand-in for every input the README's commands name."""
    ws = tmp_path_factory.mktemp("readme")
    rng = np.random.default_rng(0)
    for folder in ("photos", "my_photos", "my_noisy_photos"):
        for i in range(2):
            write_image(ws / folder / f"photo{i}.png", _noisy(rng, 40, 52)[0])
    for folder in ("pairs", "sidd_pairs", "SIDD_val"):  # >= 128 pixels: the README's --group-crop 128
        for i in range(2):
            noisy, clean = _noisy(rng, 136, 140)
            write_image(ws / folder / "noisy" / f"p{i}.png", noisy)
            write_image(ws / folder / "clean" / f"p{i}.png", clean)
    make_dng(ws / "my_raw_photos" / "IMG_0001.dng")  # what cameras and phones write
    make_heic(ws / "my_phone_photos" / "IMG_0002.heic")
    make_clip(ws / "my_clips" / "night.mp4", frames=12)
    scene = ws / "SIDD_Medium_Srgb" / "Data" / "0001_001_S6_00100_00060_3200_L"
    noisy, clean = _noisy(rng, 48, 64)
    write_image(scene / "0001_NOISY_SRGB_010.PNG", noisy)
    write_image(scene / "0001_GT_SRGB_010.PNG", clean)
    savemat(ws / "BenchmarkNoisyBlocksSrgb.mat",
            {"BenchmarkNoisyBlocksSrgb": np.stack([np.stack([_noisy(rng, 64, 64)[0] for _ in range(2)])])})
    fake_dnd(ws / "dnd_2017", [rng.random((80, 90, 3), dtype=np.float32)], [[[1, 1, 40, 50], [31, 21, 80, 84]]])
    torch.manual_seed(0)
    save(ATBSN(width=4), ws / "teacher.safetensors")
    for k in (1, 5, 9):
        t = ATBSN(width=4)
        t.config.k_train = k
        save(t, ws / f"t_k{k}.safetensors")
    for name, parts in AUTHORS_FILES.items():
        if SHARED.joinpath(*parts).exists():
            (ws / name).symlink_to(SHARED.joinpath(*parts))
    home = ws / "cache"
    home.mkdir()
    for name, parts in CACHEABLE.items():
        if SHARED.joinpath(*parts).exists():
            shutil.copyfile(SHARED.joinpath(*parts), home / cached_path(name).name)
    return ws


def adapt(index: int) -> list[str]:
    """README command ``index`` as the test runs it: globs expanded as a shell would, ``...`` replaced by the
    command before it, tiny sizes appended where it trains, and a run that the next line resumes stopped early."""
    words = shlex.split(COMMANDS[index])[1:]
    if "..." in words:
        before = shlex.split(COMMANDS[index - 1])[1:]
        at = words.index("...")
        words = [*words[:at], *before[len(words[:at]):], *words[at + 1:]]
    if "--minutes" in words:  # a time budget: replaced by tiny step counts
        at = words.index("--minutes")
        del words[at : at + 2]
    expanded = []
    for w in words:
        expanded += (sorted(glob.glob(w)) or [w]) if any(c in w for c in "*?[") else [w]
    words = [*expanded, *TINY.get(expanded[0], [])]
    nxt = COMMANDS[index + 1] if index + 1 < len(COMMANDS) else ""
    if "--resume" in nxt and "..." in nxt and "--resume" not in words:
        words += ["--stop-after", "1"]  # the next README line resumes this run: leave it something to resume
    return words


def _needs(words: list[str]) -> str | None:
    """Why the command cannot run here (a released model not in the test data, a missing test file), else None."""
    names = entries()
    for w in words:
        if w in names and not cached_path(w).exists():
            e = names[w]
            return f"needs the network: downloads {w} ({e.url()}), which the test data does not hold"
        if w in AUTHORS_FILES and not Path(w).exists():
            return f"needs {SHARED.joinpath(*AUTHORS_FILES[w])} (test data beside the repository)"
    return None


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[c[:70] for c in COMMANDS])
def test_every_readme_command_runs(index, workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("ATBSN_HOME", str(workspace / "cache"))
    words = adapt(index)
    reason = _needs(words)
    if reason:
        pytest.skip(reason)
    code = _serve_once(words, monkeypatch, capsys) if words[0] == "ui" else main(words)
    out, err = capsys.readouterr()
    assert code == 0, f"atbsn {shlex.join(words)} exited {code}:\n{out[-2000:]}\n{err[-2000:]}"
    if "-o" in words:
        assert Path(words[words.index("-o") + 1]).exists()


def _serve_once(words: list[str], monkeypatch, capsys) -> int:
    """``atbsn ui``: run the command, open the address it prints (with its token), load the page and a session
    from it, then stop the server."""
    servers, made = [], atbsn.ui.make_server
    monkeypatch.setattr(atbsn.ui, "make_server", lambda *a, **kw: servers.append(made(*a, **kw)) or servers[-1])
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(main(words)))
    thread.start()
    for _ in range(600):
        if servers or not thread.is_alive():
            break
        time.sleep(0.05)
    assert servers, "atbsn ui did not start a server"
    for _ in range(200):
        printed = re.search(r"atbsn ui: (http://\S+)", capsys.readouterr().out)
        if printed:
            break
        time.sleep(0.05)
    assert printed, "atbsn ui printed no address"
    url = printed.group(1)
    assert f":{servers[0].server_address[1]}/?token=" in url
    with urllib.request.urlopen(url, timeout=30) as r:
        assert b"atbsn" in r.read()
    with urllib.request.urlopen(url.replace("/?", "/api/setup?"), timeout=30) as r:
        setup = json.loads(r.read())
    if "--model" in words:
        assert setup["default_model"] == words[words.index("--model") + 1]
    servers[0].shutdown()
    thread.join(30)
    return result[0]


def test_the_readme_python_block_runs(workspace, monkeypatch):
    """The API block, after the README's fit made ``model.safetensors`` (else a fitted stand-in)."""
    monkeypatch.chdir(workspace)
    if not Path("model.safetensors").exists():
        assert main(["fit", "photos", "-o", "model.safetensors", *TINY["fit"], "-q"]) == 0
    code = "\n".join(fenced("python"))
    noisy = _noisy(np.random.default_rng(1), 40, 52)[0]
    scope = {"noisy": noisy, "x": torch.from_numpy(noisy.astype(np.float32)).permute(2, 0, 1)[None].contiguous()}
    exec(compile(code, "README.md (python block)", "exec"), scope)
    assert scope["out"].shape == noisy.shape and scope["out"].dtype == noisy.dtype
    assert scope["out3"].shape == noisy.shape and scope["batch"].shape == scope["x"].shape


def test_the_extraction_keeps_every_command_the_readme_shows():
    """Every line of a bash block that starts a command is one command here (continuations joined, none lost)."""
    raw = [line for body in re.findall(r"```bash\n(.*?)```", README, re.S) for line in body.splitlines()
           if line.strip().startswith("atbsn ")]
    assert len(raw) == len(COMMANDS) >= 25 and len(fenced("python")) >= 5


# ------------------------------------------------------------------------------------------ make targets
def _recipe(target: str) -> list[str]:
    """The commands ``make TARGET`` would run (make -n), with the environment already built."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under make test
    out = subprocess.run(["make", "-n", "--no-print-directory", "-o", ".venv/bin/atbsn", "-o", ".venv/.dev", target],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, f"make {target}: {out.stderr.strip()}"
    return [line for line in out.stdout.splitlines() if line.strip()]


# What checks each make target the README names: run here, or the command it runs is run by a named test.
MAKE_CHECKS = {
    "demo": ".venv/bin/atbsn demo",              # the demo itself: tests/test_demo.py, and CI runs make demo
    "test": ".venv/bin/python -m pytest -q",      # this suite
    "test-all": ".venv/bin/python -m pytest -q -m \"\"",
    "lint": ".venv/bin/ruff check src tests benchmarks docs_hooks.py",  # run below
    "gpu-check": ".venv/bin/python benchmarks/gpu_check.py",  # run below
    "docs": "NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -q",  # run below
}


def test_every_make_target_the_readme_names_is_checked():
    assert set(MAKE_TARGETS) <= set(MAKE_CHECKS), f"the README names make targets no test checks: " \
                                                   f"{sorted(set(MAKE_TARGETS) - set(MAKE_CHECKS))}"
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    for target in MAKE_TARGETS:
        assert _recipe(target)[-1] == MAKE_CHECKS[target], target


def test_make_lint_passes():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed (pip install -e .[dev])")
    out = subprocess.run([str(ruff), "check", "src", "tests", "benchmarks", "docs_hooks.py"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


def test_the_readme_is_a_front_page():
    """What atbsn is, how to start, and links: the rest lives in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_make_docs_builds_the_site_strictly(tmp_path):
    """``mkdocs build --strict``: a broken link between pages, a missing anchor or a missing repository file that
    a page links to fails the build."""
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed (pip install -e .[docs])")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = [str(mkdocs), "build", "--strict", "-q", "-d", str(tmp_path / "site")]
    out = subprocess.run(build, cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    home = (tmp_path / "site" / "index.html").read_text()
    assert "Two commands on a fresh machine" in home and 'href="results/' in home  # the README, its links made local
    assert (tmp_path / "site" / "_repo" / "benchmarks" / "results" / "fit_rule_mild_heavy.png").is_file()
    broken = tmp_path / "broken"  # a page that links to a result that is not there
    shutil.copytree(ROOT / "docs", broken / "docs")
    for name in ("mkdocs.yml", "docs_hooks.py", "README.md"):
        shutil.copy(ROOT / name, broken / name)
    page = broken / "docs" / "choices.md"
    page.write_text(page.read_text() + "\nSee [gone](../benchmarks/results/gone.md).\n")
    out = subprocess.run(build, cwd=broken, capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "gone.md" in out.stdout + out.stderr


def test_make_gpu_check_says_plainly_when_there_is_no_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: make gpu-check runs the real thing there")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")}
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 1
    assert "CUDA" in out.stdout + out.stderr and "Traceback" not in out.stderr
