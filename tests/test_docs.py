"""Every command that README.md and workflow/README.md show still works, checked in its cheapest form.

Why: the READMEs are the project's interface for a newcomer, and a renamed option, a removed script or a target
that no longer exists would otherwise go stale silently. Each shell command of a fenced ```bash block, and each
inline `enf ...`, `scripts/...`, `snakemake ...`, `python ...`, `benchmarks/*.py`, `workflow/scripts/*.py` or
`mlflow ui ...` code span, is one test case whose id names the file and the line. Nothing is run for real:

- `enf SUB ...`: the sub-command exists and every `--option` is an option string of its parser
  (`enf.cli.build_parser()`; for `enf data` the data set's own parser, every one of them for `{a,b}`);
- `scripts/X.sh ...`: the script exists, is executable and parses (`bash -n`); its word arguments appear in it,
  and `scripts/setup-env.sh KIND` passes its own dry run (`ENF_SETUP_DRY_RUN=1`);
- `snakemake ...` and `scripts/run-workflow.sh ...` on one machine: every option is one of `snakemake --help`,
  every `--configfile` and profile exists, and a complete command (no placeholder) gets a dry run
  (`snakemake -n`, in a temporary working directory holding a copy of config/config.yaml, as the repository root
  does), one per set of config files with the union of their targets (they take 10-40 s each on a loaded 2-core
  machine); the SLURM profile is not dry-run through SLURM: its `ENF_SLURM_*` variables must be read by
  profiles/slurm/config.yaml;
- `python FILE.py ...`: the file exists and `python FILE.py --help` lists every option shown;
- `mlflow ui ...`: `mlflow ui --help` lists every option shown.

Placeholders (`DIR`, `RUN`, `CHECKOUT`, `<...>`, `...`, `[...]`) are fine: such commands get the option checks
only. A command of any other kind fails its case, so that a new kind of command in the docs makes this module
grow a check for it, unless it is listed in NOT_CHECKABLE with the reason.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from enf.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "workflow/README.md")
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

#: Commands the docs show that no check here can cover, with the reason (exact command text after extraction).
NOT_CHECKABLE: dict[str, str] = {}

#: Inline code spans that are commands: what they start with (after any VAR=value assignments).
INLINE_COMMAND = re.compile(r"^(enf [a-z]|scripts/\S+\.sh\b|(\S*/)?snakemake(\s|$)|(\S*/)?python3? |"
                            r"(benchmarks|workflow/scripts)/\S+\.py\b|(\S*/)?mlflow ui\b)")
ENV_ASSIGNMENT = re.compile(r"""^(?:[A-Za-z_]\w*=(?:"[^"]*"|'[^']*'|\S+)\s+)+""")
OPTION = re.compile(r"(?<![\w/.=-])(--?[A-Za-z][\w-]*)")
#: Where an environment variable a command sets must be read (besides the script it is set for).
ENV_READERS = ("Snakefile", "scripts", "workflow", "profiles", "enf", "tests")
#: Words that mark a command as a template rather than a complete command line.
PLACEHOLDER = re.compile(r"\.\.\.|\[|\]|<|\b[A-Z][A-Z0-9_]*[A-Z0-9]\b")

# snakemake options that take one value, and those that take one or more (argparse nargs="+"): they decide
# which words of a snakemake command are targets.
SNAKEMAKE_ONE_VALUE = {"--workflow-profile", "--profile", "--directory", "-d", "--snakefile", "-s", "--cores", "-c",
                       "--jobs", "-j", "--report", "--rerun-triggers", "--executor", "-e"}
SNAKEMAKE_MANY_VALUES = {"--configfile", "--configfiles", "--config", "-C", "--set-threads", "--set-resources",
                         "--default-resources", "--forcerun", "-R", "--until", "-U", "--omit-from", "-O",
                         "--resources", "--res", "--preemptible-rules"}


@dataclass(frozen=True)
class DocCommand:
    """One shell command shown in a document: where it is and its text (continuations joined, comment removed)."""

    doc: str
    line: int
    text: str
    inline: bool

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _fenced_bash(lines: list[str], doc: str) -> tuple[list[DocCommand], set[int]]:
    """The commands of the ```bash blocks of a document, and the (0-based) indices of every fenced line."""
    commands, fenced = [], set()
    fence, language, pending, start = None, "", "", 0
    for i, raw in enumerate(lines):
        m = re.match(r"^\s*(```+|~~~+)\s*(\w*)", raw)
        if fence is None and m:
            fence, language = m.group(1), m.group(2)
            fenced.add(i)
            continue
        if fence is not None:
            fenced.add(i)
            if raw.strip().startswith(fence):
                fence = None
                continue
            if language not in ("bash", "sh", "shell"):
                continue
            text = re.sub(r"(^|\s)#.*$", "", raw).strip()
            if not pending:
                start = i + 1
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            text = (pending + text).strip()
            pending = ""
            if text:
                commands.append(DocCommand(doc, start, re.sub(r"\s+", " ", text), inline=False))
    return commands, fenced


def _inline(lines: list[str], fenced: set[int], doc: str) -> list[DocCommand]:
    """The inline code spans outside fences that are commands (they may span a line break)."""
    text = "\n".join("" if i in fenced else line for i, line in enumerate(lines))
    found = []
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = re.sub(r"\s+", " ", m.group(1)).strip()
        if INLINE_COMMAND.match(ENV_ASSIGNMENT.sub("", re.sub(r"<[^<>]*>", "PLACEHOLDER", span))):
            found.append(DocCommand(doc, text.count("\n", 0, m.start()) + 1, span, inline=True))
    return found


def doc_commands() -> list[DocCommand]:
    """Every command of DOCS, in document order."""
    out = []
    for doc in DOCS:
        lines = (ROOT / doc).read_text().splitlines()
        fenced_commands, fenced = _fenced_bash(lines, doc)
        out += sorted(fenced_commands + _inline(lines, fenced, doc), key=lambda c: c.line)
    return out


COMMANDS = doc_commands()


# -- classification ----------------------------------------------------------------------------------------------

def split_command(text: str) -> tuple[dict[str, str], list[str]]:
    """(environment assignments, words) of a command; `<...>` placeholders become one word, `\\|` a plain `|`."""
    text = re.sub(r"<[^<>]*>", "PLACEHOLDER", text).replace("\\|", "|")
    env = {}
    m = ENV_ASSIGNMENT.match(text)
    if m:
        for word in shlex.split(m.group(0)):
            key, _, value = word.partition("=")
            env[key] = value
        text = text[m.end():]
    try:
        words = shlex.split(text)
    except ValueError:  # an unbalanced quote in a template: plain words are enough for the option checks
        words = text.split()
    return env, words


def kind_of(words: list[str]) -> str:
    """The kind of a command, which picks its check: enf, script, snakemake, python or mlflow (else unknown)."""
    head = words[0] if words else ""
    name = Path(head).name
    if head == "enf" or (name.startswith("python") and words[1:3] == ["-m", "enf"]):
        return "enf"
    if re.fullmatch(r"scripts/[\w.-]+\.sh", head):
        return "script"
    if name == "snakemake":
        return "snakemake"
    if (name.startswith("python") and len(words) > 1 and words[1].endswith(".py")) or head.endswith(".py"):
        return "python"
    if name == "mlflow" and words[1:2] == ["ui"]:
        return "mlflow"
    return "unknown"


def unbracket(words: list[str]) -> list[str]:
    """The words of a template without the brackets of its optional parts (`[--seed` -> `--seed`)."""
    return [w.strip("[]") for w in words if w.strip("[]")]


def options_of(words: list[str]) -> list[str]:
    """The options (`--name`, `-x`) among the words of a command; values such as `k=v` or `-1` are not options."""
    return [m.group(1) for m in (re.match(r"(--?[A-Za-z][\w-]*)", w) for w in unbracket(words)) if m]


def is_template(text: str) -> bool:
    """Whether a command holds placeholders (and so gets option checks only, no run)."""
    _, words = split_command(text)
    return any(PLACEHOLDER.search(w) for w in words[1:])


# -- the parsers and help texts the checks compare against --------------------------------------------------

def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


@functools.cache
def help_text(*cmd: str) -> str:
    """A command's --help text (run once per command)."""
    res = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    assert res.returncode == 0, f"{' '.join(cmd)} --help failed: {res.stderr[-2000:]}"
    return res.stdout


def help_options(*cmd: str) -> frozenset[str]:
    """The option strings a command's --help text lists."""
    return frozenset(OPTION.findall(help_text(*cmd)))


def required_in_usage(usage: str) -> set[str]:
    """The options an argparse usage line requires: those outside its [optional] groups."""
    usage = usage.split("\n\n")[0]
    while re.search(r"\[[^\[\]]*\]", usage):
        usage = re.sub(r"\[[^\[\]]*\]", "", usage)
    return set(OPTION.findall(usage))


def check_required(shown: list[str], required: set[str], prog: str) -> None:
    """A command that shows some of its required options (a usage line, not a mention) shows all of them."""
    if set(shown) & required:
        missing = sorted(required - set(shown))
        assert not missing, f"`{prog}` requires {missing}, which the command does not show"


def _tool(name: str) -> str:
    """A tool of the project's environment (beside this Python), else from PATH."""
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


# -- snakemake -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SnakemakeCall:
    """What a snakemake command asks for: its options, config files, profiles and targets."""

    options: tuple[str, ...]
    configfiles: tuple[str, ...]
    profile: str | None
    workflow_profile: str | None
    targets: tuple[str, ...]


def parse_snakemake(words: list[str]) -> SnakemakeCall:
    """Split snakemake's arguments the way its parser does (options with one value, with several, flags, targets)."""
    words = unbracket(words)
    options, configfiles, targets = [], [], []
    values: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if word.startswith("-") and not re.fullmatch(r"-\d.*", word):
            options.append(name)
            if eq:
                values[name] = value
            elif name in SNAKEMAKE_ONE_VALUE and i + 1 < len(words):
                values[name] = words[i + 1]
                i += 1
            elif name in SNAKEMAKE_MANY_VALUES:
                while i + 1 < len(words) and not words[i + 1].startswith("-"):
                    i += 1
                    if name in ("--configfile", "--configfiles"):
                        configfiles.append(words[i])
        else:
            targets.append(word)
        i += 1
    return SnakemakeCall(tuple(options), tuple(configfiles), values.get("--profile"),
                         values.get("--workflow-profile"), tuple(targets))


def snakemake_call(command: DocCommand) -> SnakemakeCall:
    """The snakemake call a command makes (scripts/run-workflow.sh adds `--workflow-profile profiles/local`)."""
    _, words = split_command(command.text)
    if words[0] == "scripts/run-workflow.sh":
        return parse_snakemake(["--cores", "all", "--workflow-profile", "profiles/local", *words[1:]])
    return parse_snakemake(words[1:])


def dry_run_wanted(command: DocCommand) -> bool:
    """A complete local command (fenced, no placeholders, not SLURM, not a report) gets a dry run."""
    _, words = split_command(command.text)
    if command.inline or kind_of(words) not in ("snakemake", "script") or is_template(command.text):
        return False
    if kind_of(words) == "script" and words[0] != "scripts/run-workflow.sh":
        return False
    call = snakemake_call(command)
    return call.profile is None and not {"--report", "--summary", "-n", "--dry-run"} & set(call.options)


DRY_RUNS = [c for c in COMMANDS if dry_run_wanted(c)]


def _dry_run_key(command: DocCommand) -> tuple[str, ...]:
    return snakemake_call(command).configfiles


@functools.cache
def dry_runs() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """One `snakemake -n` per set of config files over the union of the docs' targets for it, run concurrently.

    Each runs in its own temporary working directory that holds a copy of config/config.yaml, so that the
    Snakefile's default config file is merged in exactly as in the repository root, and nothing is written there.
    """
    groups: dict[tuple[str, ...], list[str]] = {}
    for command in DRY_RUNS:
        targets = groups.setdefault(_dry_run_key(command), [])
        wanted = snakemake_call(command).targets or ("all",)  # no target: the default one
        targets += [t for t in wanted if t not in targets]

    def run(key: tuple[str, ...]) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="enf-docs-dry-run-") as work:
            (Path(work) / "config").mkdir()
            shutil.copy(ROOT / "config" / "config.yaml", Path(work) / "config" / "config.yaml")
            targets = groups[key]
            configs = ["--configfile", *(str(ROOT / f) for f in key)] if key else []
            cmd = [_tool("snakemake"), *targets, "-n", "--quiet", "rules", "--snakefile", str(ROOT / "Snakefile"),
                   "--directory", work, "--workflow-profile", str(ROOT / "profiles" / "local"), *configs]
            return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)

    with ThreadPoolExecutor(max_workers=len(groups) or 1) as pool:
        return dict(zip(groups, pool.map(run, groups)))


# -- the checks ----------------------------------------------------------------------------------------------

def check_enf(words: list[str]) -> None:
    """The sub-command exists and its parser accepts every option shown."""
    words = words[2:] if words[0] != "enf" else words  # python -m enf ...
    if words[1:] == ["..."]:
        return  # `enf ...`: any sub-command
    subcommands = _subparsers(build_parser())
    assert len(words) > 1 and words[1] in subcommands, f"no sub-command {words[1:2]} in `enf` ({sorted(subcommands)})"
    parser, rest = subcommands[words[1]], words[2:]
    parsers = [parser]
    datasets = _subparsers(parser)
    if datasets:  # enf data DATASET: each data set has its own parser
        if not rest:
            return  # `enf data` named in prose
        shown = re.fullmatch(r"\{([\w,]+)\}", rest[0])
        names = shown.group(1).split(",") if shown else [rest[0]]
        if all(PLACEHOLDER.fullmatch(n) for n in names):  # enf data NAME: any data set's options
            parsers = list(datasets.values())
            accepted = set().union(*(_option_strings(p) for p in parsers))
            unknown = [o for o in options_of(rest[1:]) if o not in accepted]
            assert not unknown, f"no data set of `enf data` has the options {unknown}"
            return
        missing = [n for n in names if n not in datasets]
        assert not missing, f"`enf data` has no data set {missing} ({sorted(datasets)})"
        parsers, rest = [datasets[n] for n in names], rest[1:]
    for p in parsers:
        unknown = [o for o in options_of(rest) if o not in _option_strings(p)]
        assert not unknown, f"`{p.prog}` does not accept {unknown}"
        required = {a.option_strings[0] for a in p._actions if a.required and a.option_strings}
        check_required(options_of(rest), required, p.prog)


def check_script(words: list[str], env: dict[str, str]) -> None:
    """The script exists, is executable and parses; its word arguments are ones it knows."""
    script = ROOT / words[0]
    assert script.is_file(), f"{words[0]} does not exist"
    assert os.access(script, os.X_OK), f"{words[0]} is not executable"
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"bash -n {words[0]}: {res.stderr}"
    source = script.read_text()
    if words[0] in ("scripts/run-workflow.sh", "scripts/run-tests.sh"):
        return  # their arguments go to snakemake (checked below) or pytest
    for word in words[1:]:
        for alternative in word.split("|"):
            if not alternative.startswith("-") and not PLACEHOLDER.fullmatch(alternative):
                assert re.search(rf"(^|[\s|(]){re.escape(alternative)}[|)]", source), \
                    f"{words[0]} has no case for {alternative!r}"
            elif alternative.startswith("-"):
                assert alternative in source, f"{words[0]} does not know the option {alternative}"
    if words[0] == "scripts/setup-env.sh":
        res = subprocess.run([str(script), *words[1:]], capture_output=True, text=True, timeout=60,
                             env={**ENV, "ENF_SETUP_DRY_RUN": "1"})
        assert res.returncode == 0, f"{' '.join(words)} (dry run): {res.stderr}"


def check_snakemake(command: DocCommand, env: dict[str, str]) -> None:
    """Every option is snakemake's, every config file and profile exists, SLURM variables are the profile's."""
    call = snakemake_call(command)
    if command.text.startswith("scripts/run-workflow.sh"):
        assert call.profile is None, "scripts/run-workflow.sh refuses --profile (its local profile is for one machine)"
    accepted = help_options(_tool("snakemake"))
    unknown = [o for o in call.options if o not in accepted]
    assert not unknown, f"`snakemake --help` lists no {unknown}"
    for configfile in call.configfiles:
        assert PLACEHOLDER.search(configfile) or (ROOT / configfile).is_file(), f"no config file {configfile}"
    for profile in (call.profile, call.workflow_profile):
        if profile is not None:
            assert (ROOT / profile / "config.yaml").is_file(), f"no profile {profile}/config.yaml"
    if call.profile is not None:  # SLURM: the variables the command sets must be ones the profile reads
        profile_text = (ROOT / call.profile / "config.yaml").read_text()
        unread = [name for name in env if name.startswith("ENF_SLURM") and name not in profile_text]
        assert not unread, f"{call.profile}/config.yaml does not read {unread}"


def check_python(words: list[str]) -> None:
    """The file exists and its --help lists every option shown."""
    words = words[1:] if Path(words[0]).name.startswith("python") else words
    script = ROOT / words[0]
    assert script.is_file(), f"{words[0]} does not exist"
    shown = options_of(words[1:])
    if shown:
        unknown = [o for o in shown if o not in help_options(sys.executable, str(script))]
        assert not unknown, f"`{words[0]} --help` lists no {unknown}"
        check_required(shown, required_in_usage(help_text(sys.executable, str(script))), words[0])


def check_mlflow_ui(words: list[str]) -> None:
    """`mlflow ui --help` lists every option shown."""
    unknown = [o for o in options_of(words[2:]) if o not in help_options(_tool("mlflow"), "ui")]
    assert not unknown, f"`mlflow ui --help` lists no {unknown}"


@functools.cache
def env_readers() -> str:
    """The text of every file that may read an environment variable (scripts, workflow, profiles, enf, tests)."""
    texts = []
    for entry in ENV_READERS:
        path = ROOT / entry
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()
                                                 and f.suffix in (".py", ".sh", ".smk", ".yaml", "")]
        texts += [f.read_text(errors="replace") for f in files
                  if "__pycache__" not in f.parts and f.resolve() != Path(__file__).resolve()]
    return "\n".join(texts)


def _cases() -> list[object]:
    """One case per command, its id FILE:LINE (FILE:LINE#2 for a second one on a line); dry runs marked slow."""
    cases, seen = [], {}
    for command in COMMANDS:
        seen[command.id] = seen.get(command.id, 0) + 1
        case_id = command.id + (f"#{seen[command.id]}" if seen[command.id] > 1 else "")
        cases.append(pytest.param(command, id=case_id, marks=[pytest.mark.slow] if command in DRY_RUNS else []))
    return cases


@pytest.mark.parametrize("command", _cases())
def test_doc_command(command: DocCommand) -> None:
    """The command shown at this line of the docs still matches the code (see the module docstring)."""
    if command.text in NOT_CHECKABLE:
        return  # listed, with its reason, as outside what these checks can cover
    env, words = split_command(command.text)
    unread = [name for name in env if name not in env_readers()]
    assert not unread, f"{command.id}: nothing in {ENV_READERS} reads {unread}"
    kind = kind_of(words)
    assert kind != "unknown", (f"{command.id}: no check for this kind of command: {command.text!r}; add one to "
                               "tests/test_docs.py, or list it in NOT_CHECKABLE with the reason")
    if kind == "enf":
        check_enf(words)
    elif kind == "script":
        check_script(words, env)
        if words[0] == "scripts/run-workflow.sh":
            check_snakemake(command, env)
    elif kind == "snakemake":
        check_snakemake(command, env)
    elif kind == "python":
        check_python(words)
    elif kind == "mlflow":
        check_mlflow_ui(words)
    if command in DRY_RUNS:
        res = dry_runs()[_dry_run_key(command)]
        assert res.returncode == 0, (f"dry run of {command.text!r} (with every target the docs show for these "
                                     f"config files) failed:\n{(res.stdout + res.stderr)[-3000:]}")


def test_the_docs_show_commands_of_every_kind() -> None:
    """The extraction itself works: both documents yield commands, fenced and inline, and a few dry runs."""
    for doc in DOCS:
        assert any(c.doc == doc and not c.inline for c in COMMANDS), doc
    assert any(c.inline and c.text.startswith("enf ") for c in COMMANDS)
    kinds = {kind_of(split_command(c.text)[1]) for c in COMMANDS}
    assert {"enf", "script", "snakemake", "python", "mlflow"} <= kinds, kinds
    assert 1 <= len({_dry_run_key(c) for c in DRY_RUNS}) <= 5
