"""``ffnet-deploy models``: the FFNet variants and their published reference numbers."""

from __future__ import annotations

from ffnet_deploy.cli.console import emit_json
from ffnet_deploy.cli.options import JsonOpt
from ffnet_deploy.cli.render import num, show
from ffnet_deploy.reporting.document import Table


def models(as_json: JsonOpt = False) -> None:
    """List the FFNet variants: size, compute, default resolution, and the published reference numbers."""
    from ffnet_deploy.checkpoints import describe_variants

    rows = describe_variants()
    if as_json:
        emit_json(rows)
        return
    show(Table(["variant", "params (M)", "GMACs", "resolution", "crop_pct", "top-1 %", "iPhone 12 ms"],
               [[r["variant"], f"{r['params'] / 1e6:.2f}", f"{r['gmacs']:.2f}", str(r["resolution"]),
                 str(r["crop_pct"]), num(r["top1"], "g"), num(r["iphone12_ms"], "g")] for r in rows],
               numeric={1, 2, 3, 4, 5, 6}, title="FFNet variants",
               caption=["top-1 and iPhone 12 latency: published in the official FFNet README (reference, not "
                        "measured here)"]))
