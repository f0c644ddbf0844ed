"""The ``ffnet-deploy`` app: every command, in the order ``--help`` lists them (Polygraphy's ``tools/registry.py``).

A command is a module of this package with one function that parses options, calls the library function a Python
user would call, and renders what it returns; it does not know the app, which registers it here.
"""

from __future__ import annotations

import typer

from ffnet_deploy.cli import (
    bench,
    demo_checkpoint,
    export,
    inspect,
    models,
    pipeline,
    reparam,
    report,
    sensitivity,
    validate,
)

app = typer.Typer(
    name="ffnet-deploy",
    help="Reparameterize, export, validate and benchmark FFNet checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command()(models.models)
app.command()(inspect.inspect)
app.command()(reparam.reparam)
app.command()(validate.validate)
app.command("demo-checkpoint")(demo_checkpoint.demo_checkpoint)
app.command(help=export.HELP)(export.export)
app.command()(sensitivity.sensitivity)
app.command()(bench.bench)

report_app = typer.Typer(help="Tables across devices: merge bench results, import measurements made elsewhere.",
                         no_args_is_help=True)
report_app.command("merge")(report.report_merge)
report_app.command("add")(report.report_add)
app.add_typer(report_app, name="report")

app.command()(pipeline.pipeline)
