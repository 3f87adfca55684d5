"""Render every diagrams/*.mmd to an SVG beside it, stamped with the source's SHA-256.

One-time setup, in a folder outside the repository (node_modules never enters it)::

    mkdir -p /tmp/mmdc && cd /tmp/mmdc
    PUPPETEER_SKIP_DOWNLOAD=1 npm install @mermaid-js/mermaid-cli

Then, from the repository root::

    python diagrams/render.py --mmdc /tmp/mmdc/node_modules/.bin/mmdc
    python diagrams/render.py --check        # are the SVGs up to date? (no Node needed)

The Mermaid CLI drives Debian's Chromium (``/usr/bin/chromium``, or ``--chromium PATH``)
through puppeteer, headless. After rendering, the script writes an XML comment
``<!-- source-sha256: HEX -->`` right after the SVG's opening tag. tests/system/test_docs.py
compares that hash with the current source, so an SVG that was not re-rendered after an edit
fails the tests (file times cannot tell: a git clone gives every file the checkout time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
RENDER_COMMAND: Final = "python diagrams/render.py --mmdc /tmp/mmdc/node_modules/.bin/mmdc"
STAMP: Final = re.compile(r"<!-- source-sha256: ([0-9a-f]{64}) -->\n?")
OPENING_TAG: Final = re.compile(r"<svg\b[^>]*>")
PUPPETEER_ARGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--headless=new",
    "--disable-background-networking",
)
MERMAID_CONFIG: Final = {
    # Plain SVG text instead of HTML inside foreignObject, so the image renders wherever an
    # SVG is shown as an <img> (GitHub, editors), not only in a browser page.
    "htmlLabels": False,
    "flowchart": {"htmlLabels": False},
    "state": {"htmlLabels": False},
    "sequence": {"useMaxWidth": True},
}


def source_digest(source: Path) -> str:
    """SHA-256 of the diagram source, line endings normalised (CRLF checkouts agree)."""
    return hashlib.sha256(source.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def embedded_digest(svg_text: str) -> str | None:
    """The source hash a rendered SVG carries, or None."""
    match = STAMP.search(svg_text)
    return match.group(1) if match else None


def stamp(svg_text: str, digest: str) -> str:
    """The SVG with one ``source-sha256`` comment right after its opening tag."""
    svg_text = STAMP.sub("", svg_text)
    tag = OPENING_TAG.search(svg_text)
    if tag is None:
        raise ValueError("not an SVG: no <svg> opening tag")
    comment = f"<!-- source-sha256: {digest} -->"
    return svg_text[: tag.end()] + comment + svg_text[tag.end() :]


def sources(directory: Path = HERE) -> list[Path]:
    return sorted(directory.glob("*.mmd"))


def stale(directory: Path = HERE) -> list[str]:
    """Why each out-of-date SVG is out of date (empty when all are current)."""
    problems = []
    for source in sources(directory):
        svg = source.with_suffix(".svg")
        if not svg.exists():
            problems.append(f"{svg.name} is missing")
            continue
        found = embedded_digest(svg.read_text(encoding="utf-8"))
        if found is None:
            problems.append(f"{svg.name} has no source-sha256 stamp")
        elif found != source_digest(source):
            problems.append(f"{svg.name} was rendered from another version of {source.name}")
    return problems


def render(source: Path, mmdc: list[str], workdir: Path) -> Path:
    svg = source.with_suffix(".svg")
    command = [
        *mmdc,
        "--quiet",
        "-p",
        str(workdir / "puppeteer.json"),
        "-c",
        str(workdir / "mermaid.json"),
        "-b",
        "white",
        "-i",
        str(source),
        "-o",
        str(svg),
    ]
    subprocess.run(command, check=True)
    text = svg.read_text(encoding="utf-8")
    svg.write_text(stamp(text, source_digest(source)), encoding="utf-8")
    return svg


def _mmdc_command(given: str | None) -> list[str]:
    name = given or os.environ.get("MMDC") or shutil.which("mmdc")
    if not name:
        raise SystemExit(
            "render.py: the Mermaid CLI was not found. Install it outside the repository:\n"
            "  mkdir -p /tmp/mmdc && cd /tmp/mmdc && "
            "PUPPETEER_SKIP_DOWNLOAD=1 npm install @mermaid-js/mermaid-cli\n"
            f"then run: {RENDER_COMMAND}"
        )
    return [name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render diagrams/*.mmd to SVG.")
    parser.add_argument("--mmdc", help="the mmdc executable (default: $MMDC, then PATH)")
    parser.add_argument(
        "--chromium",
        default=os.environ.get("PUPPETEER_EXECUTABLE_PATH", "/usr/bin/chromium"),
        help="the Chromium puppeteer drives (default /usr/bin/chromium)",
    )
    parser.add_argument("--check", action="store_true", help="only check the stamps")
    parser.add_argument("files", nargs="*", type=Path, help="sources (default: every .mmd)")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale()
        for problem in problems:
            print(f"stale: {problem}", file=sys.stderr)
        if problems:
            print(f"re-render with: {RENDER_COMMAND}", file=sys.stderr)
            return 1
        print("diagrams: every SVG matches its source")
        return 0
    mmdc = _mmdc_command(args.mmdc)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        puppeteer = {"executablePath": args.chromium, "args": list(PUPPETEER_ARGS)}
        (workdir / "puppeteer.json").write_text(json.dumps(puppeteer), encoding="utf-8")
        (workdir / "mermaid.json").write_text(json.dumps(MERMAID_CONFIG), encoding="utf-8")
        for source in args.files or sources():
            print(f"rendered {render(source.resolve(), mmdc, workdir).relative_to(Path.cwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
