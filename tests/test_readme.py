"""The user documentation: README.md stays short, its commands parse, its Python names exist, every link resolves.

README.md and ``docs/*.md`` describe petfeat as it is, never the history of its making.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

#: A Markdown inline link or image: ``[text](target)``.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
#: A fenced code block: its info string and its body.
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
#: A placeholder word in a command: ARCHIVE, OUT/, PET_FOLDER, MASK.nii.gz, tcp://HOST:8786 ...
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*[A-Z0-9]")


def _code_blocks(text: str, *languages: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang in languages]


def _commands(text: str) -> list[list[str]]:
    """The ``petfeat ...`` commands of a page's bash code blocks, as argument lists (continuations joined)."""
    out = []
    for body in _code_blocks(text, "bash", "sh", "shell", ""):
        for line in body.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\|\||;", line):
                words = shlex.split(part, comments=True)
                if words and words[0] == "petfeat":
                    out.append(words[1:])
    return out


def _substitute(args: list[str], tmp: Path) -> list[str]:
    """Placeholders (upper-case words in a path) become paths under ``tmp``; options and values stay."""
    return [a if a.startswith("-") else PLACEHOLDER.sub(lambda m: str(tmp / m.group(0).lower()), a) for a in args]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def test_readme_is_under_10_kb():
    size = README.stat().st_size
    assert size < 10 * 1024, f"README.md is {size} bytes; move detail into docs/ (aim: under 10 KB)"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    links = LINK.findall(text)
    broken = []
    for target in links:
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_readme_links_every_docs_page_it_relies_on():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in LINK.findall(README.read_text(encoding="utf-8"))}
    for name in ("real-data.md", "definitions.md", "validation.md", "regions.md", "archives.md",
                 "analysis.md", "backends.md", "outputs.md", "modules.md"):
        assert (ROOT / "docs" / name).resolve() in linked, f"README.md does not link docs/{name}"
    assert (ROOT / "benchmarks" / "results" / "README.md").resolve() in linked


def test_readme_shows_a_command_for_every_subcommand():
    shown = {args[0] for args in _commands(README.read_text(encoding="utf-8")) if args}
    assert {"suv", "scan", "extract", "analyze", "synth", "demo"} <= shown, shown


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_cli_command_shown_parses(page, tmp_path):
    from petfeat.cli import build_parser

    commands = _commands(page.read_text(encoding="utf-8"))
    if page == README:
        assert len(commands) >= 8, commands
    parser = build_parser()
    for args in commands:
        argv = _substitute(args, tmp_path)
        try:
            ns = parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{page.name}: `petfeat {' '.join(args)}` does not parse (exit {exc.code})")
        assert ns.command == args[0]


def test_the_command_check_catches_a_wrong_option(tmp_path, capsys):
    """The parse check above fails on an option petfeat does not have (the way README examples go stale)."""
    from petfeat.cli import build_parser

    (args,) = _commands("```bash\npetfeat extract --pet PET_FOLDER --lesion MASK -o OUT/\n```\n")
    with pytest.raises(SystemExit):
        build_parser().parse_args(_substitute(args, tmp_path))
    assert "--lesion" in capsys.readouterr().err


def _module_names(module: str) -> set[str]:
    """Names a petfeat module defines or imports at top level, read from its source (nothing heavy is imported)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"no module {module}"
    names = set()
    for node in ast.parse(Path(spec.origin).read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _public(name: str) -> bool:
    """Whether ``petfeat.NAME`` exists, without importing the module a lazy name comes from."""
    import petfeat

    lazy = getattr(petfeat, "_LAZY", {})
    return name in lazy and name in _module_names(lazy[name]) or name in vars(petfeat)


def test_python_example_names_exist():
    """Every ``from petfeat... import`` and ``petfeat.NAME`` of README's Python blocks exists."""
    blocks = _code_blocks(README.read_text(encoding="utf-8"), "python")
    assert blocks, "README.md has no Python example"
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("petfeat"):
                defined = _module_names(node.module)
                for alias in node.names:
                    assert alias.name in defined, f"{node.module} has no {alias.name}"
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "petfeat":
                assert _public(node.attr), f"petfeat has no {node.attr}"


def test_the_name_check_catches_a_missing_name():
    assert "extract" in _module_names("petfeat.extract") and "read_lesion_mask" in _module_names("petfeat.io.labels")
    assert "read_lesions" not in _module_names("petfeat.io.labels")
    assert _public("read_pet_series") and _public("compute_suv_factors") and not _public("read_series")


#: Words of a work log, not of the project: the docs describe what petfeat is and does now.
HISTORY_WORDS = re.compile(r"\b(sessions?|rounds?)\b", re.I)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_describe_the_project_not_its_history(page):
    bad = [f"{page.name}:{i}: {line.strip()}" for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
           if HISTORY_WORDS.search(line)]
    assert not bad, "history wording in the docs:\n" + "\n".join(bad)
