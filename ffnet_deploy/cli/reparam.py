"""``ffnet-deploy reparam``: write a fused checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ffnet_deploy.cli.console import emit_json
from ffnet_deploy.cli.options import JsonOpt, TrustOpt, VariantOpt
from ffnet_deploy.cli.render import show
from ffnet_deploy.reporting.document import Table


def reparam(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Unfused FFNet checkpoint.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the fused checkpoint.")],
    variant: VariantOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing fused checkpoint written by "
                                            "ffnet-deploy (nothing else).")] = False,
    trust_checkpoint: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fold every BatchNorm, branch, skip and layer scale; write a fused checkpoint that records its variant."""
    from ffnet_deploy.checkpoints import reparameterize_checkpoint

    result = reparameterize_checkpoint(checkpoint, output, variant, force=force, trust=trust_checkpoint)
    if as_json:
        emit_json(result)
        return
    before, after = result["report"]["before"], result["report"]["after"]
    rows = [["modules", str(before["modules"]), str(after["modules"])],
            ["parameters", f"{before['params']:,}", f"{after['params']:,}"],
            ["ops per forward", str(before["total_ops"]), str(after["total_ops"])]]
    rows += [[f"  {op}", str(before["ops"].get(op, 0)), str(after["ops"].get(op, 0))]
             for op in sorted(set(before["ops"]) | set(after["ops"]))]
    parity = result["parity"]
    rows.append(["max |fused - unfused| (logit range)", "",
                 f"{parity['max_abs_error']:.2e} ({parity['reference_range']:.3g})"])
    show(Table(["", "before", "after"], rows, numeric={1, 2}, title=f"reparameterized {result['variant']} -> {output}"))
