"""``ffnet-deploy demo-checkpoint``: a real checkpoint trained on scikit-learn's digits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ffnet_deploy.cli.console import emit_json
from ffnet_deploy.cli.options import JsonOpt
from ffnet_deploy.cli.progress import bar
from ffnet_deploy.cli.render import show
from ffnet_deploy.reporting.document import Table


def demo_checkpoint(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the checkpoint to this file.")]
    = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --output checkpoint written by "
                                            "ffnet-deploy (nothing else).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train ffnet_digits on scikit-learn's digits (about a minute, cached): a real checkpoint to try every stage on.

    The checkpoint is unfused and has 10 classes; validate it with --data digits. Later runs take it from the cache
    ($FFNET_DEPLOY_CACHE, else ~/.cache/ffnet-deploy) at once.
    """
    from ffnet_deploy.demo import demo_checkpoint as run_demo

    with bar("training ffnet_digits") as progress:
        result = run_demo(output, force=force, progress=progress)
    if as_json:
        emit_json(result.to_dict())
        return
    seconds = "-" if result.train_seconds is None else f"{result.train_seconds:.1f}"
    show(Table(["field", "value"], [
        ["variant / classes", f"{result.recipe['variant']} / 10"],
        ["test accuracy", f"{100 * result.test_accuracy:.1f}% (digits test split, 500 images)"],
        ["training seconds", seconds + (" (earlier run)" if result.cached else "")],
        ["from cache", "yes" if result.cached else "no (trained now)"],
        ["cache file", str(result.cache_path)],
    ], title=f"demo checkpoint {result.path}", key_value=True))
