"""The documentation builds without warnings, and its code examples run.

Conventions for the pages in ``docs/``:

* Every fenced block whose info string is ``python`` is executed, in page order, each page in
  a fresh namespace and a fresh temporary working directory (what a block writes there is seen
  by the later blocks of the same page, and by nothing else). A failure names the page and the
  block number (1-based, counting only the executed blocks of the page).
* A fenced ``bash`` block is executed too when the line just before its opening fence is the
  HTML comment ``<!-- run -->`` (invisible in the built pages). It runs with ``bash -e`` in the
  page's working directory, after the page's Python blocks that precede it, with the ``popkin``
  command of this Python environment first on ``PATH``. Shell blocks without the marker are
  shown, not run: use them only for commands that need something a test cannot have (the
  installation script, a long run whose Python equivalent is executed on the same page).
* Other blocks (``toml``, ``text``, ``csv``) are data or output, not code.

Examples keep fits small (2 chains x 200 draws after 200 tuning steps) so that the whole file
runs in a few minutes on two cores; the compiled sampler of a spec and design is reused across
pages within the process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUN_MARKER = "<!-- run -->"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    language: str      # "python" or "bash"
    source: str
    line: int          # 1-based line of the opening fence


def code_blocks(text: str) -> list[Block]:
    """The executed blocks of a page, in order: python blocks, and bash blocks marked to run."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match.group("indent"), match.group("fence")
        info = match.group("info").strip().split()
        language = info[0].lower() if info else ""
        start = i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence)
                                      and lines[i].strip().strip(fence[0]) == ""):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        previous = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        if language == "python":
            blocks.append(Block("python", "\n".join(body) + "\n", start + 1))
        elif language in ("bash", "sh", "console") and previous == RUN_MARKER:
            blocks.append(Block("bash", "\n".join(body) + "\n", start + 1))
    return blocks


def nav_pages() -> list[str]:
    """Pages in the order of the ``nav`` of mkdocs.yml."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:"):]
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, flags=re.M)


PAGES = [p for p in nav_pages()
         if (DOCS / p).is_file() and code_blocks((DOCS / p).read_text(encoding="utf-8"))]


def _environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MPLBACKEND"] = "Agg"
    env["NO_MKDOCS_2_WARNING"] = "1"      # mkdocs-material's banner about its successor
    return env


def test_every_page_is_in_the_nav():
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    missing = sorted(pages - set(nav_pages()))
    assert not missing, f"pages not in the nav of mkdocs.yml: {missing}"


def test_mkdocs_builds_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=_environment())
    log = result.stdout + result.stderr
    warnings = [line for line in log.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert result.returncode == 0 and not warnings, log
    assert (tmp_path / "site" / "index.html").is_file()


def test_the_command_line_page_documents_every_command_and_option():
    from popkin.cli import build_parser

    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name, command in sub.choices.items():
        assert re.search(rf"^## `popkin {name}", page, flags=re.M), f"no section for popkin {name}"
        section = page.split(f"## `popkin {name}", 1)[1].split("\n## ", 1)[0]
        for action in command._actions:
            if action.option_strings and "--help" not in action.option_strings:
                assert any(o in section for o in action.option_strings), (name, action.option_strings)
            elif not action.option_strings:
                assert action.dest.upper() in section, (name, action.dest)


def toml_blocks(text: str) -> list[tuple[int, str]]:
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), start=1):
        if current is None and line.strip() == "```toml":
            current, start = [], number
        elif current is not None and line.strip() == "```":
            blocks.append((start, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


@pytest.mark.parametrize("page", [p for p in nav_pages() if (DOCS / p).is_file()])
def test_toml_examples_parse(page):
    """Every TOML block is valid TOML, and one with a [model] table is a valid spec."""
    import tomllib

    import popkin

    for line, block in toml_blocks((DOCS / page).read_text(encoding="utf-8")):
        try:
            document = tomllib.loads(block)
        except tomllib.TOMLDecodeError as exc:
            pytest.fail(f"docs/{page}, TOML block at line {line}: {exc}", pytrace=False)
        if "model" in document and "parameters" in document:
            popkin.load_model(block)


def test_the_spec_reference_lists_every_structure_and_covariate_kind():
    from popkin.population import covariate_kinds, error_models
    from popkin.structural import structure_names

    spec_page = (DOCS / "model-spec.md").read_text(encoding="utf-8")
    covariate_page = (DOCS / "covariates.md").read_text(encoding="utf-8")
    for name in structure_names():
        assert f"| `{name}` |" in spec_page, f"structure {name} is not in model-spec.md"
    for name in error_models():
        assert f"| `{name}` |" in spec_page, f"error model {name} is not in model-spec.md"
    for kind in covariate_kinds():
        assert f"| `{kind}` |" in covariate_page, f"covariate kind {kind} is not in covariates.md"


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, tmp_path, monkeypatch):
    os.environ.setdefault("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    env = _environment()
    for number, block in enumerate(code_blocks((DOCS / page).read_text(encoding="utf-8")), start=1):
        where = f"docs/{page}, block {number} (line {block.line})"
        if block.language == "python":
            try:
                exec(compile(block.source, where, "exec"), namespace)
            except Exception:
                pytest.fail(f"{where} failed:\n{block.source}\n{traceback.format_exc()}",
                            pytrace=False)
        else:
            assert shutil.which("popkin", path=env["PATH"]), "the popkin command is not installed"
            result = subprocess.run(["bash", "-e", "-c", block.source], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                pytest.fail(f"{where} exited with {result.returncode}:\n{block.source}\n"
                            f"{result.stdout}\n{result.stderr}", pytrace=False)
    import matplotlib.pyplot as plt

    plt.close("all")
