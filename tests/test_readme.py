"""The commands the README and the docs show are commands the CLI takes.

Every shell command in the README's (and ``docs/iphone.md``'s, ``docs/jetson.md``'s) ```bash blocks and in the example
CI workflow's ``run:`` lines that invokes ``ffnet-deploy`` is parsed against the real CLI without running it: a
renamed or removed option, a missing required one, or a wrong value type fails here, naming the file and line.
The set-up and test commands must be the ones ``.ci/run`` runs, and the demo command the one the pipeline tests run.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main

from ffnet_deploy import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKDOWN_DOCS = (README, ROOT / "docs" / "iphone.md", ROOT / "docs" / "jetson.md")
WORKFLOWS = (ROOT / "docs" / "ci" / "validate-workflow.yml", ROOT / "docs" / "ci" / "pipeline-matrix-workflow.yml")
CI_RUN = ROOT / ".ci" / "run"

SETUP = 'python3 -m venv .venv && .venv/bin/pip install "torch==2.14.1" "torchvision==0.29.1" -e ".[all,dev]"'
# CI runs the README's set-up with the litert extra beside it (README, Set-up: litert is not in `all`).
SETUP_CI = SETUP.replace('".[all,dev]"', '".[all,dev,litert]"')
DEMO = ".venv/bin/ffnet-deploy pipeline --demo --output out/demo"
TEST = ".venv/bin/python -m pytest -q -n auto"
# CI runs both tiers (README, Tests: --slow adds the full-size models and the emulated CPU).
TEST_CI = TEST + " --slow"


@dataclass(frozen=True)
class Command:
    """One simple command of a document: its words, and where it is written (``README.md:42``)."""

    where: str
    words: tuple[str, ...]

    @property
    def is_ffnet_deploy(self) -> bool:
        return bool(self.words) and Path(self.words[0]).name == "ffnet-deploy"


def _split(line: str, where: str) -> list[Command]:
    """A logical shell line -> its simple commands: comments outside quotes dropped, split at ``&&``, ``;``, ``|``,
    redirections (``> file``) dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&;|<>")
    lexer.whitespace_split = True
    commands, words = [], []
    redirect = False
    for token in lexer:
        if redirect:  # the file of a redirection
            redirect = False
        elif token and set(token) <= set("<>&") and set(token) & set("<>"):  # >, >>, <, >&
            redirect = True
        elif token and set(token) <= set("&;|"):
            commands.append(Command(where, tuple(words)))
            words = []
        else:
            words.append(token)
    commands.append(Command(where, tuple(words)))
    return [c for c in commands if c.words]


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join backslash-continued lines; each logical line keeps the number of its first physical line."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, text in lines:
        start, head = pending if pending is not None else (number, "")
        joined = head + text
        if joined.rstrip().endswith("\\"):
            pending = (start, joined.rstrip()[:-1] + " ")
        else:
            pending = None
            out.append((start, joined))
    if pending is not None:
        out.append(pending)
    return out


def markdown_commands(path: Path) -> list[Command]:
    """The commands of every ```bash block of a Markdown file."""
    commands: list[Command] = []
    block: list[tuple[int, str]] | None = None
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = text.strip()
        if block is None:
            if fence == "```bash":
                block = []
        elif fence == "```":
            for start, line in _logical_lines(block):
                commands += _split(line, f"{path.relative_to(ROOT)}:{start}")
            block = None
        else:
            block.append((number, text))
    assert block is None, f"{path}: unclosed ```bash block"
    return commands


def workflow_commands(path: Path) -> list[Command]:
    """The commands of a GitHub Actions workflow's ``run:`` steps (``run: cmd`` and ``run: |`` blocks), read as
    text."""
    lines = path.read_text(encoding="utf-8").splitlines()
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)(?:-\s+)?run:\s*(.*)$", lines[i])
        if match is None or lines[i].lstrip().startswith("#"):
            i += 1
            continue
        indent, value = len(match.group(1)), match.group(2).strip()
        body: list[tuple[int, str]] = []
        if value in ("|", ">", "|-", ">-"):
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                body.append((i + 1, lines[i].strip()))
                i += 1
        else:
            body.append((i + 1, value))
            i += 1
        for start, line in _logical_lines([(n, t) for n, t in body if t]):
            commands += _split(line, f"{path.relative_to(ROOT)}:{start}")
    return commands


def all_commands() -> list[Command]:
    return ([c for path in MARKDOWN_DOCS for c in markdown_commands(path)]
            + [c for path in WORKFLOWS for c in workflow_commands(path)])


def _protected_args(ctx) -> list[str]:
    # click >= 8.2 keeps them in _protected_args (the public name warns); older click in protected_args.
    return list(ctx.__dict__.get("_protected_args", ctx.__dict__.get("protected_args", [])))


def parse(args: list[str]) -> tuple[str, ...]:
    """Parse ``ffnet-deploy ARGS`` the way the CLI would, into every nested command, without invoking anything.

    Returns:
        The command path, e.g. ``("report", "merge")``.

    Raises:
        The click (or typer-vendored click) usage error of a bad command line.
    """
    command = typer.main.get_command(cli.app)
    ctx = command.make_context("ffnet-deploy", list(args), resilient_parsing=False)
    path: list[str] = []
    while hasattr(command, "resolve_command"):  # a group: resolve and parse its subcommand
        name, command, rest = command.resolve_command(ctx, [*_protected_args(ctx), *ctx.args])
        path.append(name)
        ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=False)
    return tuple(path)


COMMANDS = all_commands()
FFNET_COMMANDS = [c for c in COMMANDS if c.is_ffnet_deploy]


def test_documents_have_commands():
    wheres = {c.where.split(":")[0] for c in FFNET_COMMANDS}
    assert wheres == {"README.md", "docs/iphone.md", "docs/jetson.md", "docs/ci/validate-workflow.yml",
                      "docs/ci/pipeline-matrix-workflow.yml"}
    assert len([c for c in FFNET_COMMANDS if c.where.startswith("README.md")]) >= 20


@pytest.mark.parametrize("command", FFNET_COMMANDS, ids=[c.where for c in FFNET_COMMANDS])
def test_command_parses(command: Command):
    usage_errors, _ = cli.click_exception_types()
    try:
        parse(list(command.words[1:]))
    except usage_errors as err:
        pytest.fail(f"{command.where}: {shlex.join(command.words)}\n  is not a valid command line: "
                    f"{err.format_message()}")


def test_every_mentioned_subcommand_has_help(capsys):
    paths = {parse(list(c.words[1:])) for c in FFNET_COMMANDS}
    assert {("pipeline",), ("bench",), ("validate",), ("export",), ("report", "merge"), ("report", "add")} <= paths
    for path in sorted(paths):
        assert cli.main([*path, "--help"]) == 0, path
        assert "Usage" in capsys.readouterr().out


def test_parse_rejects_a_bad_option():
    usage_errors, _ = cli.click_exception_types()
    with pytest.raises(usage_errors):
        parse(["report", "add", "iphone12.csv", "--device-name", "iPhone 12"])  # --csv is an option
    with pytest.raises(usage_errors):
        parse(["pipeline", "--demo", "--no-such-flag"])


def test_study_modules_exist():
    modules = [c.words[2] for c in COMMANDS if len(c.words) > 2 and c.words[1] == "-m"
               and c.words[2].startswith(("ffnet_deploy.", "studies."))]
    assert "studies.where_time_goes" in modules and "studies.int8_portable" in modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


def test_setup_and_test_commands_are_what_ci_runs():
    readme = _lines(README)
    assert SETUP in readme and SETUP_CI in readme and TEST in readme and TEST_CI in readme
    ci = [c.words for line in _lines(CI_RUN) if line and not line.startswith("#") for c in _split(line, "ci")]
    setup = [c.words for c in _split(SETUP_CI, "README")]
    start = ci.index(setup[0])
    assert ci[start:start + len(setup)] == setup, "README's set-up command differs from .ci/run's install lines"
    assert tuple(shlex.split(TEST_CI)) in ci, "README's test command (both tiers) differs from .ci/run's pytest line"
    for workflow in WORKFLOWS:
        assert f"run: {SETUP}" in _lines(workflow), f"{workflow.name}: its install step is not the README's set-up"


def test_demo_command_is_the_one_the_pipeline_tests_run():
    assert DEMO in _lines(README)
    assert parse(shlex.split(DEMO)[1:]) == ("pipeline",)
    pipeline_tests = (ROOT / "tests" / "pipeline" / "test_pipeline.py").read_text(encoding="utf-8")
    assert '"pipeline", "--demo"' in pipeline_tests


def test_readme_deploy_toml_is_accepted(tmp_path):
    from ffnet_deploy.pipeline.config import build_config, read_toml

    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 1
    (tmp_path / "deploy.toml").write_text(blocks[0], encoding="utf-8")
    config = build_config(read_toml(tmp_path / "deploy.toml"), {})
    assert config.formats == ("onnx", "openvino") and config.checkpoint == tmp_path / "ffnet_1.pth.tar"
    from ffnet_deploy.pipeline.config import toml_keys

    keys = toml_keys()
    missing = [k for k in sorted(keys) if f"`{k}`" not in text]
    assert not missing, f"README does not list the deploy.toml key(s) {missing}"
