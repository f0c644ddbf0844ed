"""The ``ffnet-deploy`` command line: a thin package, one module per command (as Polygraphy's ``tools/<command>/``).

A command parses options, calls the library function a Python user calls the same way, and renders what it returns;
decisions, file checks and numbers live in the product modules below. The parts:

- :mod:`~ffnet_deploy.cli.registry`: the app, every command in the order ``--help`` lists them;
- one module per command: :mod:`~ffnet_deploy.cli.models`, :mod:`~ffnet_deploy.cli.inspect`,
  :mod:`~ffnet_deploy.cli.reparam`, :mod:`~ffnet_deploy.cli.validate`, :mod:`~ffnet_deploy.cli.demo_checkpoint`,
  :mod:`~ffnet_deploy.cli.export`, :mod:`~ffnet_deploy.cli.sensitivity`, :mod:`~ffnet_deploy.cli.bench`,
  :mod:`~ffnet_deploy.cli.report` (``report merge``/``report add``), :mod:`~ffnet_deploy.cli.pipeline`;
- shared: :mod:`~ffnet_deploy.cli.options` (options and help texts from the registries),
  :mod:`~ffnet_deploy.cli.console` (the consoles and their width, ``--json``, this command line),
  :mod:`~ffnet_deploy.cli.render` (tables are :class:`ffnet_deploy.reporting.document.Table` objects, drawn by
  :mod:`ffnet_deploy.reporting.console`), :mod:`~ffnet_deploy.cli.progress` (status lines and bars for progress
  events), :mod:`~ffnet_deploy.cli._main` (the entry point and the exit-code policy: user errors print one red
  line and exit 1, usage errors exit 2, anything else is a bug and keeps its traceback).
"""

from ffnet_deploy.cli._main import click_exception_types, entry, main
from ffnet_deploy.cli.registry import app

__all__ = ["app", "click_exception_types", "entry", "main"]
