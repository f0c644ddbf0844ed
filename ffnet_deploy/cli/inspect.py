"""``ffnet-deploy inspect``: describe a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ffnet_deploy.cli.console import emit_json
from ffnet_deploy.cli.options import JsonOpt, TrustOpt, VariantOpt
from ffnet_deploy.cli.render import show
from ffnet_deploy.reporting.document import Table


def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file to describe.")],
    variant: VariantOpt = None,
    trust_checkpoint: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Describe a checkpoint: container, detected variant, parameters, fused or not, sha256."""
    from ffnet_deploy.checkpoints import describe_checkpoint

    info = describe_checkpoint(checkpoint, variant, trust=trust_checkpoint)
    if as_json:
        emit_json(info)
        return
    show(Table(["field", "value"], [[str(k), str(v)] for k, v in info.items()], title=f"checkpoint {checkpoint}",
               key_value=True))
