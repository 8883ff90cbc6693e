"""MkDocs hooks: the README is the site's home page, and links from docs/ to the repository's other files work.

On GitHub the pages in docs/ link to results and figures as ``../benchmarks/results/...``; a site holds only docs/.
So each such link is checked (a missing file fails the build, as ``--strict`` does for links between pages), an
image is copied into the site under ``_repo/``, and any other file is named as a path in code.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s#]*)(#[^)]*)?\)")
IMAGE = (".png", ".jpg", ".jpeg", ".gif", ".svg")


def _home() -> str:
    """The README with its links into docs/ made relative to docs/, the rest of the repository as ../."""
    text = (ROOT / "README.md").read_text()

    def fix(m: re.Match) -> str:
        bang, label, target, anchor = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        if not target or "://" in target:
            return m.group(0)
        target = target.removeprefix("docs/") if target.startswith("docs/") else f"../{target}"
        return f"{bang}[{label}]({target}{anchor})"

    return LINK.sub(fix, text)


def on_files(files, config):
    files.append(File.generated(config, "index.md", content=_home()))
    pages = [_home()] + [p.read_text() for p in Path(config["docs_dir"]).glob("*.md")]
    for target in sorted({t for text in pages for b, _, t, _ in LINK.findall(text) if b and t.startswith("../")}):
        path = ROOT / target[3:]
        if path.suffix.lower() in IMAGE and path.is_file():
            files.append(File.generated(config, f"_repo/{target[3:]}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    def fix(m: re.Match) -> str:
        bang, label, target, anchor = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        if not target.startswith("../"):
            return m.group(0)
        rel = target[3:]
        if rel == "README.md":
            return f"[{label}](index.md{anchor})"
        if not (ROOT / rel).exists():
            raise PluginError(f"{page.file.src_uri}: links to {rel}, which does not exist")
        if bang:
            return f"![{label}](_repo/{rel})"
        return f"`{rel}`" if label.strip("`") == Path(rel).name else f"{label} (`{rel}`)"

    return LINK.sub(fix, markdown)
