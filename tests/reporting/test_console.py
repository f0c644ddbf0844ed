"""The terminal view of a document table (:mod:`ffnet_deploy.reporting.console`): user strings are text, never
markup; the document's other renderings show the same cells."""

from __future__ import annotations

from rich.console import Console

from ffnet_deploy.reporting.console import print_line, print_table, rich_table
from ffnet_deploy.reporting.document import Table, bad, cell_text, markdown_table, ok, plain


def _text(renderable, width: int = 120) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_user_strings_are_shown_as_they_are():
    table = Table(["name", "value"], [["[bold]x[/]", "pip install 'ffnet-deploy[coreml]'"], ["a\nb", "c\rd"]],
                  title="checkpoint /tmp/[red]/ck.pth", caption=["note [1]: [/]"])
    text = _text(rich_table(table))
    assert "[bold]x[/]" in text and "ffnet-deploy[coreml]" in text
    assert "checkpoint /tmp/[red]/ck.pth" in text and "note [1]: [/]" in text
    assert "a b" in text and "c d" in text  # a line break in a user string never starts a new line


def test_key_value_table_numeric_columns_and_caption_lines():
    table = Table(["field", "value"], [["seconds", "1.5"]], key_value=True)
    text = _text(rich_table(table))
    assert "field" not in text and "seconds" in text  # no header row
    numbers = Table(["model", "p50 ms"], [["a", "1.5"], ["bb", "10.25"]], numeric={1}, caption_left=True,
                    caption=["[1] first", "[2] second"])
    lines = [line.rstrip() for line in _text(rich_table(numbers)).splitlines()]
    assert any(line.endswith("  1.5 │") for line in lines)  # right-aligned
    assert "[1] first" in lines and "[2] second" in lines  # one caption line each, left-aligned


def test_verdict_spans_are_styled_on_the_terminal_and_plain_in_markdown():
    table = Table(["check", "result"], [["parity", [ok("pass"), plain(" detail")]], ["finite", [bad("FAIL")]]],
                  row_styles={1: "muted"})
    console = Console(record=True, width=80, force_terminal=True, color_system="standard")
    print_table(console, table)
    styled = console.export_text(styles=True, clear=False)
    assert "\x1b[32mpass" in styled and "FAIL" in styled and "\x1b[2m" in styled  # green, and a dim row
    assert "pass detail" in console.export_text()
    assert cell_text(table.rows[0][1]) == "pass detail"
    assert "| parity | pass detail |" in markdown_table(table)


def test_print_line_is_text():
    console = Console(record=True, width=80, color_system=None)
    print_line(console, [("alert", "error:"), ("text", " see [bold]this[/]")])
    assert console.export_text() == "error: see [bold]this[/]\n"
