"""The README and docs/ say true things: every file path and link they name exists, every
``layerkit`` command and option they show exists, and the commands shown running run, with the
exit code (and the ``error:`` lines) shown.

What is read where:

- paths and relative links: README.md, CONTRIBUTING.md, CHANGELOG.md and every page in docs/;
- commands and options: the same pages but CHANGELOG.md (it names what was removed, on purpose):
  ``layerkit ...`` in code blocks and inline code, bare ``--option`` spans, and the README's command
  reference table;
- runs: every ``$ layerkit ...`` line of a code block, and the cheap commands of every other block
  (:data:`RUN`); the rest are listed in :data:`NOT_RUN` with the reason.
"""

from __future__ import annotations

import importlib
import re
import shlex
import warnings
from functools import lru_cache
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer.main

from train_support import hermetic  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
PATHS_ONLY = [ROOT / "CHANGELOG.md"]

#: the repository's top-level folders: a path starting with one of them names a repository file
REPO_DIRS = ("layerkit", "docs", "models", "examples", "bench", "tests", "tools", "plugins", "schemas")

#: paths written like repository paths that stand for the reader's own files
USER_FILES = {
    "tests/test_my_layers.py": "the test module of the reader's own plugin package (README, docs/plugins.md)",
    "tests/test_layers.py": "the test module of the reader's own plugin package (docs/plugins.md)",
}

#: commands run where a page shows them (besides every ``$ layerkit ...`` line): they read only
#: shipped files and take well under a second each
RUN = {"validate", "summary", "graph", "layers", "plugins", "schema", "models", "models list", "models copy",
       "check-grads", "data list", ""}  # "": the program's own options (-h, --version)

#: commands shown but not run, and why
NOT_RUN = {
    "fit": "trains a model: minutes on full data; the README's `$ layerkit fit` example is run",
    "evaluate": "needs a trained run directory (runs/<run>)",
    "plot": "needs a trained run directory; tests/test_plot_image.py renders the plot",
    "predict": "needs a trained run directory and the reader's images",
    "export": "needs a trained run directory; tests/test_export_onnx.py exports",
    "data download": "downloads from the internet",
}

#: ``check-grads`` arguments too slow for the docs test (seconds each); tests/test_gradcheck.py covers them
SLOW_ARGS = {"models/alexnet_mnist.json": "check-grads of alexnet_mnist takes 2-3 s",
             "alexnet_mnist": "check-grads of alexnet_mnist takes 2-3 s"}

#: the reader's own files that pages show commands on, made here so the commands can run: each
#: gives the ``error:`` lines the page shows
USER_MODEL_FILES = {
    # README, "Model files": a lenet5 with two mistakes
    "lenet.json": {
        "format": 1, "name": "lenet", "input": {"shape": [1, 28, 28]},
        "layers": [{"name": "conv1", "type": "conv2d", "filters": 6, "kernel_size": 5, "padding": 2},
                   {"type": "relu"}, {"type": "max_pool2d", "pool_size": 2},
                   {"name": "conv2", "type": "conv2d", "filters": 16, "kernel_size": 0},
                   {"type": "relu"}, {"type": "maxpool2d", "pool_size": 2},
                   {"type": "flatten"}, {"type": "dense", "units": 10}],
        "loss": {"type": "softmax_cross_entropy"}},
    # docs/model-format.md, "Errors": a mistake per layer
    "bad.json": {
        "format": 1, "name": "bad", "input": {"shape": [1, 28, 28]},
        "layers": [{"name": "conv1", "type": "conv2d", "filters": 6, "kernel_size": 0},
                   {"type": "relu", "inputs": ["conv"]},
                   {"type": "dense", "unit": 10},
                   {"type": "softmx"}],
        "loss": {"type": "softmax_cross_entropy"}},
}


# -- reading a page --------------------------------------------------------------------

@dataclass
class Block:
    """A fenced code block: the line of its first content line, its language, its lines."""

    line: int
    lang: str
    lines: list[str]


@dataclass
class Span:
    """An inline code span: its line, text and the heading it is under."""

    line: int
    text: str
    heading: str


@dataclass
class Page:
    """A markdown page split into what the checks read."""

    path: Path
    name: str
    blocks: list[Block] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    links: list[tuple[int, str]] = field(default_factory=list)
    headings: list[str] = field(default_factory=list)
    table_rows: list[tuple[int, str, list[str]]] = field(default_factory=list)  # (line, heading, cells)


FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def read_page(path: Path, text: str | None = None) -> Page:
    text = path.read_text(encoding="utf-8") if text is None else text
    try:
        name = str(path.relative_to(ROOT))
    except ValueError:
        name = path.name
    page = Page(path, name)
    prose: list[str] = []  # the page with code blocks blanked, so offsets keep their line numbers
    fence, block = None, None
    heading = ""
    headings_at: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, block = match.group(1), Block(number + 1, match.group(2).lower(), [])
            prose.append("")
            continue
        if fence is not None and block is not None:
            if line.strip().startswith(fence[0] * len(fence)) and line.strip().strip(fence[0]) == "":
                page.blocks.append(block)
                fence, block = None, None
            else:
                block.lines.append(line)
            prose.append("")
            continue
        prose.append(line)
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            page.headings.append(heading)
            headings_at.append((number, heading))
        if line.startswith("|") and not re.fullmatch(r"[|\s:-]+", line):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            page.table_rows.append((number, heading, cells))
    body = "\n".join(prose)
    starts = [0]
    for line in prose:
        starts.append(starts[-1] + len(line) + 1)

    def line_of(offset: int) -> int:
        lo, hi = 0, len(starts) - 1
        while lo < hi - 1:
            mid = (lo + hi) // 2
            if starts[mid] <= offset:
                lo = mid
            else:
                hi = mid
        return lo + 1

    def heading_at(number: int) -> str:
        found = ""
        for at, title in headings_at:
            if at <= number:
                found = title
        return found

    for paragraph in re.finditer(r"(?:[^\n]+\n?)+", body):  # a span never crosses a blank line
        for match in SPAN.finditer(paragraph.group(0)):
            number = line_of(paragraph.start() + match.start())
            page.spans.append(Span(number, " ".join(match.group(2).split()), heading_at(number)))
        without_spans = SPAN.sub(lambda m: " " * len(m.group(0)), paragraph.group(0))
        for match in LINK.finditer(without_spans):
            page.links.append((line_of(paragraph.start() + match.start()), match.group(1)))
    return page


@lru_cache(maxsize=None)
def page_anchors(path: Path) -> frozenset[str]:
    return frozenset(anchors(read_page(path)))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Page) -> set[str]:
    """The anchors links may name: each heading's, and each ``<a id=...>``."""
    seen: dict[str, int] = {}
    out = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", page.path.read_text(encoding="utf-8")
                         if page.path.exists() else ""))
    for heading in page.headings:
        base = slug(heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


# -- (a) paths and links ---------------------------------------------------------------

PATH = re.compile(r"(?<![\w./~$@:-])((?:%s)/[\w.*/<>{}\[\]-]*)" % "|".join(REPO_DIRS))
DOTTED = re.compile(r"(?<![\w./-])(layerkit(?:\.[A-Za-z_]\w*)+)")


def repo_path_exists(path: str) -> bool:
    """Whether ``path`` is in the repository, or in the package (``plugins/manager.py``); ``*``,
    ``<name>``, ``{a,b}`` and upper-case parts (``models/NAME.json``) stand for any name."""
    path = path.rstrip(".,:;)")
    pattern = re.sub(r"<[^>]*>|\{[^}]*\}|\[[^\]]*\]|\b[A-Z][A-Z_]+\b", "*", path).rstrip("/")
    for base in (ROOT, ROOT / "layerkit"):
        if any(base.glob(pattern)) if "*" in pattern else (base / pattern).exists():
            return True
    return False


def code_texts(page: Page) -> list[tuple[int, str]]:
    """(line, text) of every inline span and every code-block line."""
    out = [(s.line, s.text) for s in page.spans]
    for block in page.blocks:
        out += [(block.line + i, line) for i, line in enumerate(block.lines)]
    return out


def path_problems(page: Page) -> list[str]:
    problems = []
    for line, text in code_texts(page):
        for match in PATH.finditer(text):
            path = match.group(1).rstrip(".,:;)")
            if path in USER_FILES or repo_path_exists(path):
                continue
            problems.append(f"{page.name}:{line}: {path}: no such file or folder in the repository")
    for line, target in page.links:
        if re.match(r"[a-z][\w+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        where = (page.path.parent / file).resolve() if file else page.path
        if not where.exists():
            problems.append(f"{page.name}:{line}: link {target}: {file} does not exist")
        elif anchor and where.suffix == ".md" and anchor not in page_anchors(where):
            problems.append(f"{page.name}:{line}: link {target}: {where.name} has no heading #{anchor}")
    return problems


#: names a page mentions on purpose although they are gone
GONE_NAMES = {
    "layerkit.builder.DEFAULT_BATCH_SIZE": "docs/stability.md: removed in 0.2.0, listed as not kept",
    "layerkit.cli.train.summary_line": "docs/stability.md: removed in 0.2.0, listed as not kept",
    "layerkit.layers._windows": "docs/stability.md: removed in 0.2.0, listed as not kept",
}


def resolves(dotted: str) -> bool:
    """Whether ``layerkit.a.b.C`` names a module or an attribute of one."""
    parts = dotted.split(".")
    with warnings.catch_warnings():  # stability.md names the first release's paths on purpose: they warn
        warnings.simplefilter("ignore", DeprecationWarning)
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


def name_problems(page: Page) -> list[str]:
    """``layerkit.x.y`` names in code that name nothing, and ``import``s of layerkit that fail."""
    problems = []
    for line, text in code_texts(page):
        for match in DOTTED.finditer(text):
            if match.group(1) not in GONE_NAMES and not resolves(match.group(1)):
                problems.append(f"{page.name}:{line}: {match.group(1)}: no such module or name")
        imported = re.match(r"\s*from\s+(layerkit[\w.]*)\s+import\s+\(?([\w\s,]+)", text)
        if imported:
            for name in (n.strip().split(" as ")[0] for n in imported.group(2).split(",")):
                if name and not resolves(f"{imported.group(1)}.{name}"):
                    problems.append(f"{page.name}:{line}: from {imported.group(1)} import {name}: no such name")
    return problems


# -- (b) commands and options ------------------------------------------------------------

def command_tree() -> Any:
    from layerkit.cli import app

    return typer.main.get_command(app)  # typer's own click: read through duck typing


ROOT_COMMAND = command_tree()


def all_options() -> set[str]:
    out: set[str] = set()

    def walk(cmd: Any) -> None:
        for param in cmd.params:
            out.update(o for o in param.opts + param.secondary_opts if o.startswith("-"))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(ROOT_COMMAND)
    return out


HELP = {"-h", "--help"}  # the context's help options: on every command, not among its params
ALL_OPTIONS = all_options() | HELP
SCRIPTS = sorted(p for folder in ("bench", "tools", "examples") for p in (ROOT / folder).glob("*.py"))


def script_options(script: Path) -> set[str]:
    """The ``--options`` a repository script's source spells out (argparse's add_argument)."""
    return set(re.findall(r"[\"'](--[a-z][\w-]*)[\"']", script.read_text(encoding="utf-8"))) | HELP


SCRIPT_OPTIONS = set().union(*(script_options(p) for p in SCRIPTS))
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "text"}
LAUNCHERS = {"mpiexec", "mpirun", "srun", "timeout", "time", "nohup", "env"}
SHELL_OPS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1", "(", ")"}


def is_placeholder(token: str) -> bool:
    return token.isupper() or token.startswith("<") or token in ("...", "…")


def layerkit_argv(words: list[str]) -> list[str] | None:
    """The arguments after ``layerkit`` in one shell command's words, or None if it does not run layerkit."""
    i = 0
    while i < len(words) and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[i]):  # VAR=value before a command
        i += 1
    if i < len(words) and words[i] in LAUNCHERS:
        while i < len(words) and words[i] != "layerkit":
            i += 1
    if i >= len(words):
        return None
    if words[i] == "layerkit" or words[i].endswith("/bin/layerkit"):
        return words[i + 1:]
    if re.fullmatch(r"python[\d.]*", Path(words[i]).name) and words[i + 1:i + 3] == ["-m", "layerkit"]:
        return words[i + 3:]
    return None


def commands_in(text: str, shell: bool) -> list[list[str]]:
    """Every layerkit invocation in ``text``: a shell line (``shell``: pipes and ``&&`` end a
    command) or an inline span, where ``|`` separates alternatives."""
    text = text.replace("\\|", "|")
    if shell:
        try:
            lexer = shlex.shlex(text, posix=True, punctuation_chars="|&;<>()")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words = list(lexer)
        except ValueError:
            return []
        found, current = [], []
        for word in [*words, ";"]:
            if word in SHELL_OPS or set(word) <= set("|&;<>()"):
                argv = layerkit_argv(current)
                if argv:  # a bare "layerkit" in a shell block is a word of a diagram, not a command
                    found.append(argv)
                current = []
            else:
                current.append(word)
        return found
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    cut = next((i for i, w in enumerate(words) if w in SHELL_OPS - {"|"}), len(words))
    argv = layerkit_argv(words[:cut])
    return [argv] if argv else []  # a bare `layerkit` names the program, not a command


def resolve(argv: list[str]) -> tuple[Any, str, list[str], list[str]]:
    """(command, its name, the problems with ``argv``, the positional arguments) for one invocation."""
    cmd: Any = ROOT_COMMAND
    names: list[str] = []
    problems: list[str] = []
    positional: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i].strip("[]")
        if token.startswith("-") and len(token) > 1 and not token.lstrip("-")[:1].isdigit():
            for option in (token.split("=", 1)[0],) if token.startswith("--") else (token[:2],):
                param = next((p for p in cmd.params if option in p.opts + p.secondary_opts), None)
                if param is None and option in HELP:
                    break
                if param is None:
                    where = " ".join(["layerkit", *names])
                    problems.append(f"{where}: no option {option}")
                elif param.param_type_name == "option" and not param.is_flag and not param.count \
                        and "=" not in token and not (token.startswith("-") and not token.startswith("--")
                                                      and len(token) > 2) \
                        and not argv[i].endswith("]"):
                    i += 1  # the option's value
        elif hasattr(cmd, "commands") and not positional:
            if token in cmd.commands:
                cmd = cmd.commands[token]
                names.append(token)
            elif is_placeholder(token):
                break
            else:
                close = [n for n in cmd.commands if n.startswith(token[:3])]
                problems.append(f"layerkit {' '.join([*names, token])}: no such command"
                                + (f" (did you mean {close[0]}?)" if close else ""))
                break
        else:
            positional.append(argv[i])
        i += 1
    return cmd, " ".join(names), problems, positional


def script_problems(text: str) -> list[str]:
    """``python bench/speed.py --option``: the script exists and spells out the option."""
    problems = []
    for match in re.finditer(r"python[\d.]*\s+((?:bench|tools|examples)/[\w/.-]+\.py)((?:\s+[^|;&]*)?)", text):
        script = ROOT / match.group(1)
        if not script.is_file():
            continue  # the path check reports it
        known = script_options(script)
        for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", match.group(2)):
            if option not in known:
                problems.append(f"{match.group(1)}: no option {option}")
    return problems


def subcommand(name: str) -> Any:
    cmd: Any = ROOT_COMMAND
    for part in name.split():
        cmd = cmd.commands[part]  # type: ignore[attr-defined]
    return cmd


def options_of(name: str) -> set[str]:
    cmd = subcommand(name)
    return {o for p in cmd.params for o in p.opts + p.secondary_opts}


def command_problems(page: Page) -> list[str]:
    problems = []
    for block in page.blocks:
        if block.lang not in SHELL_LANGS:
            continue
        prompted = any(line.lstrip().startswith("$ ") for line in block.lines)
        for i, line in enumerate(block.lines):
            if prompted and not line.lstrip().startswith("$ "):
                continue  # output
            command_line = line.lstrip().removeprefix("$ ")
            for argv in commands_in(command_line, shell=True):
                problems += [f"{page.name}:{block.line + i}: {p}" for p in resolve(argv)[2]]
            problems += [f"{page.name}:{block.line + i}: {p}" for p in script_problems(command_line)]
    for span in page.spans:
        for argv in commands_in(span.text, shell=False):
            problems += [f"{page.name}:{span.line}: {p}" for p in resolve(argv)[2]]
        problems += [f"{page.name}:{span.line}: {p}" for p in script_problems(span.text)]
        if span.text.startswith("--"):  # a bare option: of some command, or of a script the text runs
            for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", span.text):
                if option not in ALL_OPTIONS | SCRIPT_OPTIONS:
                    problems.append(f"{page.name}:{span.line}: {option}: no such option of any layerkit command "
                                    f"or repository script")
    for line, heading, cells in page.table_rows:
        if heading != "Command reference" or len(cells) < 2 or not cells[0].startswith("`"):
            continue
        names = []
        for text in re.findall(r"`([^`]+)`", cells[0]):
            cmd, name, found, _ = resolve(text.replace("\\|", "|").split())
            problems += [f"{page.name}:{line}: {p}" for p in found]
            names.append(name)
        for option in re.findall(r"`(--[a-z][\w-]*)", cells[1]):
            if not any(option in options_of(n) for n in names if n):
                problems.append(f"{page.name}:{line}: {option}: no such option of layerkit {' / '.join(names)}")
    return problems


# -- (c) commands shown running ----------------------------------------------------------

@dataclass
class Shown:
    """A layerkit command a page shows running: where, its arguments and env, what it should give."""

    where: str
    argv: list[str]
    env: dict[str, str]
    exit_code: int
    errors: list[str]  # the error lines shown, to compare exactly ([] where none are shown)


def shown_runs(page: Page) -> tuple[list[Shown], list[tuple[str, str]]]:
    """The commands of ``page`` to run, and those not run with the reason: every ``$ layerkit``
    line of a code block, and the quick commands (:data:`RUN`) of other code lines and inline code."""
    runs: list[Shown] = []
    skipped: list[tuple[str, str]] = []

    def quick(where: str, argv: list[str], env: dict[str, str], mention: bool = False) -> None:
        cmd, name, problems, positional = resolve(argv)
        if problems:
            return  # reported by the command test
        if mention and len(positional) < sum(p.param_type_name == "argument" and p.required for p in cmd.params):
            return  # `layerkit check-grads` in a sentence names the command; it is not shown running
        if name not in RUN and name.split(" ")[0] not in RUN:
            skipped.append((where, NOT_RUN.get(name) or NOT_RUN.get(name.split(" ")[0])
                            or f"layerkit {name}: not a quick command"))
        elif any(is_placeholder_text(a) for a in argv):
            skipped.append((where, "a pattern with placeholders, not a command"))
        elif any(a in SLOW_ARGS for a in positional):
            skipped.append((where, next(SLOW_ARGS[a] for a in positional if a in SLOW_ARGS)))
        elif not all(runnable_argument(a) for a in positional):
            missing = [a for a in positional if not runnable_argument(a)]
            skipped.append((where, f"names the reader's own files: {' '.join(missing)}"))
        else:
            runs.append(Shown(where, argv, env, 0, []))

    for block in page.blocks:
        if block.lang not in SHELL_LANGS:
            continue
        prompted = any(line.lstrip().startswith("$ ") for line in block.lines)
        for i, line in enumerate(block.lines):
            where = f"{page.name}:{block.line + i}"
            stripped = line.lstrip()
            if prompted and not stripped.startswith("$ "):
                continue
            command_line = stripped.removeprefix("$ ")
            env = dict(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=(\S+)\s", command_line.split("layerkit")[0]))
            for argv in commands_in(command_line, shell=True):
                if not prompted:
                    quick(where, argv, env)
                    continue
                if resolve(argv)[2]:
                    continue  # reported by the command test
                output = []
                for later in block.lines[i + 1:]:
                    if later.lstrip().startswith("$ "):
                        break
                    output.append(later)
                errors = [o.strip() for o in output if o.strip().startswith("error:")]
                failed = any(o.startswith("FAIL") for o in output)
                runs.append(Shown(where, argv, env, 2 if errors else 1 if failed else 0, errors))
    for span in page.spans:
        for argv in commands_in(span.text, shell=False):
            quick(f"{page.name}:{span.line}", argv, {}, mention=True)
    return runs, skipped


def is_placeholder_text(token: str) -> bool:
    """``NAME``, ``FILE.py``, ``RUN_DIR``, ``<run>``, ``[--json]``, ``...``: a pattern, not a value."""
    return bool(re.search(r"[<\[]|\.\.\.|…|\b[A-Z][A-Z_]+\b", token)) or bool(re.fullmatch(r"[A-Z](,[A-Z])*", token))


def runnable_argument(arg: str) -> bool:
    """Whether a positional argument is there to run on: a shipped file or model name, or a made file."""
    from layerkit.modelfile.zoo import names as shipped_names

    if arg in USER_MODEL_FILES or arg in shipped_names() or not re.search(r"[./]", arg):
        return True
    path = arg.split(":")[0]
    return any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()


def all_runs() -> tuple[list[Shown], list[tuple[str, str]]]:
    """Every page's commands to run (each distinct one once), and those not run."""
    runs: dict[tuple, Shown] = {}
    skipped = []
    for path in PAGES:
        found, not_run = shown_runs(read_page(path))
        for shown in found:
            runs.setdefault((tuple(shown.argv), tuple(shown.env.items()), shown.exit_code, tuple(shown.errors)), shown)
        skipped += not_run
    return list(runs.values()), skipped


RUNS, SKIPPED = all_runs()


def prepare_cwd(folder: Path) -> None:
    """A working folder that looks like the repository (its folders linked) plus the user files shown."""
    import json

    for name in REPO_DIRS:
        (folder / name).symlink_to(ROOT / name)
    for name, model in USER_MODEL_FILES.items():
        (folder / name).write_text(json.dumps(model, indent=2) + "\n")


def run_shown(shown: Shown, folder: Path, monkeypatch, capsys) -> list[str]:
    """Run one shown command in ``folder``; the problems, if it does not do what the page shows."""
    import glob

    from layerkit.cli import main

    monkeypatch.chdir(folder)
    for key, value in shown.env.items():
        monkeypatch.setenv(key, value)
    argv = []
    for arg in shown.argv:
        matches = sorted(glob.glob(arg)) if "*" in arg else []
        argv += matches or [arg]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    problems = []
    if code != shown.exit_code:
        problems.append(f"{shown.where}: layerkit {' '.join(shown.argv)} exits {code}, the page implies "
                        f"{shown.exit_code}; it printed:\n{err}")
    got = [line.strip() for line in err.splitlines() if line.startswith("error:")]
    if shown.errors and got != shown.errors:
        problems.append(f"{shown.where}: layerkit {' '.join(shown.argv)} prints other errors than shown:\n"
                        + "\n".join(f"  shown: {e}" for e in shown.errors) + "\n"
                        + "\n".join(f"  got:   {g}" for g in got))
    return problems


# -- the tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", PAGES + PATHS_ONLY, ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_and_links_exist(path):
    assert path_problems(read_page(path)) == []


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layerkit_names_exist(path):
    assert name_problems(read_page(path)) == []


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_and_options_exist(path):
    assert command_problems(read_page(path)) == []


def test_every_page_is_read():
    # a page added to docs/ is checked without listing it; a command each page shows is found
    assert {p.name for p in PAGES} >= {"README.md", "CONTRIBUTING.md", "training.md", "datasets.md"}
    shown = {s.where.split(":")[0] for s in RUNS} | {w.split(":")[0] for w, _ in SKIPPED}
    assert {"README.md", "docs/model-format.md", "docs/plugins.md", "docs/training.md"} <= shown


def test_every_exception_is_still_needed():
    # the allow-lists stay small: an entry no page needs any more is removed
    text = "\n".join(p.read_text(encoding="utf-8") for p in PAGES + PATHS_ONLY)
    unused = [name for name in [*USER_FILES, *GONE_NAMES, *SLOW_ARGS] if name not in text]
    assert unused == []
    assert {a for shown in RUNS for a in shown.argv} >= set(USER_MODEL_FILES)
    assert set(NOT_RUN.values()) <= {reason for _, reason in SKIPPED}


@pytest.mark.parametrize("shown", RUNS, ids=[s.where for s in RUNS])
def test_shown_command_runs_as_shown(shown, hermetic, tmp_path, monkeypatch, capsys):  # noqa: F811
    prepare_cwd(tmp_path)
    assert run_shown(shown, tmp_path, monkeypatch, capsys) == []


# -- what the pages list is all there is -------------------------------------------------

def section(page: Path, heading: str) -> str:
    """The text of ``page`` under ``heading``, up to the next heading of the same or a higher level."""
    text = page.read_text(encoding="utf-8")
    match = re.search(rf"^(#+) {re.escape(heading)}$", text, re.M)
    assert match, f"{page.name}: no section {heading!r}"
    body = text[match.end():]
    end = re.search(rf"^#{{1,{len(match.group(1))}}} ", body, re.M)
    return body[:end.start()] if end else body


def test_readme_names_every_optimizer_and_schedule():
    from layerkit.nn.schedules import SCHEDULES
    from layerkit.plugins.manager import load_registry

    training = section(ROOT / "README.md", "Training")
    for name in load_registry(entry_points=False, disabled=set()).names("optimizer"):
        assert f"`{name}`" in training, f"README, Training: optimizer {name} is not named"
    for name in SCHEDULES:
        assert name in training, f"README, Training: schedule {name} is not named"


def test_model_format_training_table_has_every_key():
    from layerkit.modelfile.schema import TRAINING_SCHEMA

    table = section(ROOT / "docs" / "model-format.md", "`training`")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \|(.*)$", table, re.M)}
    assert set(rows) == set(TRAINING_SCHEMA["properties"])
    for key in TRAINING_SCHEMA["properties"]["data"]["properties"]:
        assert f"`{key}`" in rows["data"], f"docs/model-format.md: training.data.{key} is not described"


def test_datasets_page_states_what_load_dataset_returns(hermetic):  # noqa: F811
    import layerkit
    from layerkit.data import load_data

    (x_train, y_train), _ = layerkit.load_dataset("mnist")  # the embedded sample here (hermetic)
    prepared = load_data("mnist", {"train_limit": 10, "test_limit": 10}, input_shape=(1, 28, 28))
    intro = " ".join(section(ROOT / "docs" / "datasets.md", "Datasets").split("|")[0].split())
    stated = re.search(r"`(\w+)` images for the IDX", intro)
    assert stated and stated.group(1) == str(x_train.dtype) == "uint8"
    assert "`layerkit.load_dataset` returns" in intro and str(y_train.dtype) == "int64"
    assert prepared.x_train.dtype == np.float32 and "float32 images, channels first" in intro


# -- the checker itself: a page with one mistake of each kind ------------------------------

FAKE_PAGE = """\
# A page

See [the format](model-format.md#no-such-heading), [missing](nowhere.md) and
`layerkit/trainer.py` (moved), and `layerkit.training.runs.NoSuchThing`.

```bash
layerkit fitt models/lenet5.json
layerkit fit models/lenet5.json --epoch 3
```

Inline: `layerkit summary models/lenet5.json --no-such-flag`, and `--not-an-option` anywhere.

```
$ layerkit validate models/lenet5.json
error: models/lenet5.json: a mistake that is not there
$ layerkit validate no_such_model.json
```
"""


def test_the_checker_finds_each_kind_of_mistake(hermetic, tmp_path, monkeypatch, capsys):  # noqa: F811
    page = read_page(ROOT / "docs" / "fake.md", FAKE_PAGE)
    paths = path_problems(page)
    assert any("model-format.md has no heading #no-such-heading" in p for p in paths)
    assert any("nowhere.md does not exist" in p for p in paths)
    assert any("layerkit/trainer.py: no such file" in p for p in paths)
    assert name_problems(page) == ["docs/fake.md:4: layerkit.training.runs.NoSuchThing: no such module or name"]
    commands = command_problems(page)
    assert any("layerkit fitt: no such command (did you mean fit?)" in p for p in commands)
    assert any("docs/fake.md:8: layerkit fit: no option --epoch" in p for p in commands)
    assert any("layerkit summary: no option --no-such-flag" in p for p in commands)
    assert any("--not-an-option: no such option of any layerkit command or repository script" in p
               for p in commands)
    assert len(commands) == 4
    runs, _ = shown_runs(page)
    assert [r.exit_code for r in runs] == [2, 0]
    prepare_cwd(tmp_path)
    wrong_errors, wrong_code = (run_shown(r, tmp_path, monkeypatch, capsys) for r in runs)
    assert "exits 0, the page implies 2" in wrong_errors[0] and "prints other errors" in wrong_errors[1]
    assert "exits 2, the page implies 0" in wrong_code[0] and "no_such_model.json" in wrong_code[0]
