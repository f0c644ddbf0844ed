"""The efficient-mixer claim and the peer comparison, read from bench rows.

FFNet's claim (Yun, Lee, Ro, arXiv 2406.02021, Sec. 3.2) is that FFNified attention keeps what self-attention does
at a fraction of its cost. ``ffnet-deploy bench --compare-mixers`` times one FFNet skeleton with every registered
token mixer (:func:`ffnet_deploy.benchmarks.specs.mixer_specs`); :func:`mixer_table` turns those rows into a table per
runtime and a verdict that says, from the numbers alone, where the claim holds and where it does not.
:func:`peer_table` sets FFNet-1 against published backbones of its size class.

Both functions take :class:`~ffnet_deploy.benchmarks.results.BenchRow` objects and select by family: ``"mixer"``
rows (model ``"<skeleton>/<mixer>"``, ``mixer`` set), ``"peer"`` rows and ``"ffnet"`` rows. Latency ratios compare
rows of one runtime, precision, compute-unit setting and batch, measured in the same run.
"""

from __future__ import annotations

from collections.abc import Sequence

from ffnet_deploy.benchmarks.results import BenchRow, fmt_ms
from ffnet_deploy.benchmarks.specs import BASELINE_MIXER as BASELINE
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.models.config import VARIANTS
from ffnet_deploy.reporting import markdown as md

TIE = 0.05
"""Latency ratios within this fraction of 1 count as on par: closer than that is within timing noise on a CPU."""

GroupKey = tuple[str, str, "str | None", int]


def _group_key(row: BenchRow) -> GroupKey:
    return (row.runtime, row.precision, row.compute_units, row.batch)


def _group_label(key: GroupKey) -> str:
    runtime, precision, units, batch = key
    return f"{runtime}{f' ({units})' if units else ''} {precision}{f', batch {batch}' if batch != 1 else ''}"


def _groups(rows: Sequence[BenchRow]) -> dict[GroupKey, list[BenchRow]]:
    out: dict[GroupKey, list[BenchRow]] = {}
    for row in rows:
        out.setdefault(_group_key(row), []).append(row)
    return out


def _ok(row: BenchRow | None) -> bool:
    return row is not None and row.status == "ok" and row.p50 is not None and row.p50 > 0


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def fmt_gmacs(value: float | None) -> str:
    """GMACs for a table: 2 decimals, 2 significant digits below 0.1 (tiny test models), ``-`` when missing."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _status_cell(row: BenchRow | None) -> str:
    if row is None:
        return "-"
    if row.status != "ok":
        return row.status
    return fmt_ms(row.p50)


def _join(parts: Sequence[str]) -> str:
    parts = list(parts)
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


# -- token mixers --------------------------------------------------------------------------------------------------

def _skeleton(row: BenchRow) -> str:
    return row.model.split("/", 1)[0]


def _mixer_of(row: BenchRow) -> str:
    return row.mixer or row.model.split("/", 1)[-1]


def mixer_table(rows: Sequence[BenchRow], baseline: str = BASELINE) -> str:
    """Markdown: per skeleton and runtime, each mixer's latency, cost and ratio to FFNified, then a verdict.

    The ratio is the mixer's p50 latency over the baseline's at the same resolution (above 1: FFNified is faster).
    The MAC ratio beside it says whether the latency follows the arithmetic. The verdict is computed from these
    ratios; ratios within :data:`TIE` of 1 count as on par.

    Args:
        rows: Any bench rows; only ``family == "mixer"`` ones are used.
        baseline: The mixer the ratios are taken against.

    Raises:
        ConfigError: When there is no mixer row, or a skeleton has no row of the baseline mixer.
    """
    mixer_rows = [r for r in rows if r.family == "mixer"]
    if not mixer_rows:
        raise ConfigError("mixer table: no rows of family 'mixer'; run 'ffnet-deploy bench --compare-mixers'")
    lines = [md.heading(2, f"Token mixers (ratio = mixer p50 / {baseline} p50; above 1 means {baseline} is faster)"),
             ""]
    findings: list[str] = []
    shortfalls: list[str] = []
    for skeleton in dict.fromkeys(_skeleton(r) for r in mixer_rows):
        skel_rows = [r for r in mixer_rows if _skeleton(r) == skeleton]
        mixers = list(dict.fromkeys([baseline, *(_mixer_of(r) for r in skel_rows)]))
        if not any(_mixer_of(r) == baseline for r in skel_rows):
            raise ConfigError(f"mixer table: {skeleton} has no {baseline!r} rows to compare the other mixers with; "
                              f"include the {baseline} mixer in the run")
        for key, group in _groups(skel_rows).items():
            label = f"{skeleton}, {_group_label(key)}"
            cells = {(r.resolution, _mixer_of(r)): r for r in group}
            resolutions = sorted({r.resolution for r in group})
            rows = []
            for res in resolutions:
                base = cells.get((res, baseline))
                for mixer in mixers:
                    row = cells.get((res, mixer))
                    if row is None:
                        continue
                    ratio = row.p50 / base.p50 if _ok(row) and _ok(base) else None
                    mac_ratio = (row.gmacs / base.gmacs if base is not None and row.gmacs and base.gmacs else None)
                    note = (row.reason or "") if row.status != "ok" else ""
                    rows.append([res, mixer, _status_cell(row), _ratio(ratio), fmt_gmacs(row.gmacs), _ratio(mac_ratio),
                                 _num(row.params_m, ".1f"), _num(row.peak_rss_mb, ".0f"), note])
            lines += [md.heading(3, label), "",
                      *md.table(["res", "mixer", "p50 ms", "ratio", "GMACs", "MAC ratio", "params (M)", "peak MB",
                                 "note"], rows, "rlrrrrrrl", padded=False)]
            lines.append("")
            for mixer in mixers[1:]:
                sentence, short = _mixer_verdict(cells, resolutions, baseline, mixer)
                findings.append(f"- {md.text(f'{label}: {sentence}')}")
                shortfalls += [f"{label} against {mixer} {s}" for s in short]
    lines += ["### Verdict", "", *findings, ""]
    if shortfalls:
        lines.append(md.text(f"The claim does not hold for {_join(shortfalls)}."))
    else:
        lines.append(md.text(f"Nowhere in these rows is {baseline} slower than, or on par with, another mixer."))
    return "\n".join(lines) + "\n"


def _mixer_verdict(cells: dict[tuple[int, str], BenchRow], resolutions: Sequence[int], baseline: str, mixer: str
                   ) -> tuple[str, list[str]]:
    """One sentence on ``mixer`` against ``baseline``, and the places where the baseline is not faster."""
    ratios: list[tuple[int, float]] = []
    macs: list[float] = []
    not_run: list[str] = []
    for res in resolutions:
        row, base = cells.get((res, mixer)), cells.get((res, baseline))
        if row is None or base is None:
            continue
        if _ok(row) and _ok(base):
            ratios.append((res, row.p50 / base.p50))
            if row.gmacs and base.gmacs:
                macs.append(row.gmacs / base.gmacs)
        else:
            which, failed = (mixer, row) if not _ok(row) else (baseline, base)
            not_run.append(f"{which} {failed.status} at {res}" + (f" ({failed.reason})" if failed.reason else ""))
    if not ratios:
        sentence = f"no resolution where both {baseline} and {mixer} ran, so nothing to compare"
        return sentence + (f"; {'; '.join(not_run)}." if not_run else "."), []
    faster = [(res, r) for res, r in ratios if r > 1 + TIE]
    slower = [(res, r) for res, r in ratios if r < 1 - TIE]
    par = [(res, r) for res, r in ratios if 1 - TIE <= r <= 1 + TIE]
    if len(faster) == len(ratios) or len(slower) == len(ratios):
        how = "faster" if faster else "slower"
        sentence = (f"{baseline} is {how} than {mixer} at every measured resolution: {mixer} takes "
                    f"{_trend(ratios, baseline)}")
    else:
        parts = []
        if faster:
            parts.append(f"faster at {_at(faster)}")
        if par:
            parts.append(f"on par (within {TIE:.0%}) at {_at(par)}")
        if slower:
            parts.append(f"slower at {_at(slower)}")
        sentence = f"against {mixer}, {baseline} is {_join(parts)} ({mixer} time / {baseline} time)"
    if macs:
        lo, hi = min(macs), max(macs)
        sentence += f" ({mixer} does {lo:.2f}x" + (f" to {hi:.2f}x" if hi - lo > 0.005 else "") + " the MACs)"
    if not_run:
        sentence += f"; {'; '.join(not_run)}"
    short = []
    if slower:
        short.append(f"at {', '.join(str(res) for res, _ in slower)} ({baseline} slower)")
    if par:
        short.append(f"at {', '.join(str(res) for res, _ in par)} (on par)")
    return sentence + ".", short


def _trend(ratios: Sequence[tuple[int, float]], baseline: str) -> str:
    """``"1.80x the time of ffnified at 224, growing to 5.10x at 512"``: first and last resolution."""
    (res0, r0), (res1, r1) = ratios[0], ratios[-1]
    first = f"{r0:.2f}x the time of {baseline} at {res0}"
    if len(ratios) == 1:
        return first
    if r1 > r0 * (1 + TIE):
        how = "growing to"
    elif r1 < r0 * (1 - TIE):
        how = "shrinking to"
    else:
        how = "and"
    return f"{first}, {how} {r1:.2f}x at {res1}"


def _at(items: Sequence[tuple[int, float]]) -> str:
    return ", ".join(f"{res} ({r:.2f}x)" for res, r in items)


# -- peers ---------------------------------------------------------------------------------------------------------

def peer_table(rows: Sequence[BenchRow], reference: str = "ffnet_1") -> str:
    """Markdown: the peers and the FFNets with published top-1, resolution and cost, then p50 per runtime.

    Each runtime/precision gets two columns: the p50 latency and the ratio of ``reference`` 's p50 to the row's
    (below 1: the FFNet is faster). Every model runs at its own resolution, the one its published top-1 was measured
    at. A closing paragraph per runtime says which peers the reference is faster than, and which peers are both
    faster and more accurate.

    Args:
        rows: Any bench rows; ``family`` ``"peer"`` and ``"ffnet"`` ones are used.
        reference: The FFNet row model the ratios are taken against; at its variant's evaluation resolution when
            rows at several resolutions exist.

    Raises:
        ConfigError: When there are no peer rows or no row of ``reference``.
    """
    selected = [r for r in rows if r.family in ("peer", "ffnet")]
    if not any(r.family == "peer" for r in selected):
        raise ConfigError("peer table: no rows of family 'peer'; run 'ffnet-deploy bench' with peers (needs timm)")
    ref_rows = [r for r in selected if r.model == reference and r.family == "ffnet"]
    if not ref_rows:
        raise ConfigError(f"peer table: no {reference!r} row to compare the peers with; include it in the run")
    ref_res = VARIANTS[reference].resolution if reference in VARIANTS else None
    if ref_res not in {r.resolution for r in ref_rows}:
        ref_res = ref_rows[0].resolution
    groups = _groups(selected)
    refs = {key: next((r for r in group if r.model == reference and r.resolution == ref_res), None)
            for key, group in groups.items()}
    models = list(dict.fromkeys([(reference, ref_res),
                                 *((r.model, r.resolution) for r in selected if r.family == "ffnet"),
                                 *((r.model, r.resolution) for r in selected if r.family == "peer")]))
    headers = ["model", "top-1 (%)", "res", "GMACs", "params (M)"]
    for key in groups:
        headers += [f"{_group_label(key)} p50 ms", f"{reference}/model"]
    rows = []
    for model, res in models:
        mine = [r for r in selected if (r.model, r.resolution) == (model, res)]
        top1 = next((r.published_top1 for r in mine if r.published_top1 is not None), None)
        gmacs = next((r.gmacs for r in mine if r.gmacs), None)
        params = next((r.params_m for r in mine if r.params_m), None)
        cells = [model, _num(top1, ".1f"), res, fmt_gmacs(gmacs), _num(params, ".1f")]
        for key, group in groups.items():
            row = next((r for r in group if (r.model, r.resolution) == (model, res)), None)
            ref = refs[key]
            ratio = ref.p50 / row.p50 if _ok(row) and _ok(ref) else None
            cells += [_status_cell(row), _ratio(ratio)]
        rows.append(cells)
    lines = [md.heading(2, f"Peers (ratio = {reference} p50 / model p50; below 1 means {reference} is faster)"), "",
             *md.table(headers, rows, "lrrrr" + "rr" * len(groups), padded=False)]
    lines += ["", "### Summary", ""]
    for key, group in groups.items():
        lines.append(f"- {md.text(f'{_group_label(key)}: {_peer_summary(group, refs[key], reference)}')}")
    return "\n".join(lines) + "\n"


def _peer_summary(group: Sequence[BenchRow], ref: BenchRow | None, reference: str) -> str:
    if not _ok(ref):
        return f"{reference} has no measured latency here, so no comparison."
    peers = [r for r in group if r.family == "peer" and _ok(r)]
    if not peers:
        return "no peer has a measured latency here."
    top1 = f" ({ref.published_top1:.1f} %)" if ref.published_top1 is not None else ""
    faster = [r for r in peers if ref.p50 < r.p50]
    text = f"{reference}{top1} is faster than {len(faster)} of {len(peers)} peers"
    if faster:
        text += " (" + ", ".join(f"{r.model} {ref.p50 / r.p50:.2f}x" for r in faster) + ")"
    dominating = [r for r in peers if r.p50 < ref.p50 and r.published_top1 is not None
                  and ref.published_top1 is not None and r.published_top1 > ref.published_top1]
    if ref.published_top1 is None:
        return text + "; without its published top-1 there is no accuracy comparison."
    if dominating:
        text += "; faster and more accurate than it: " + ", ".join(
            f"{r.model} ({r.published_top1:.1f} %, {ref.p50 / r.p50:.2f}x)" for r in dominating)
    else:
        text += "; no peer is both faster and more accurate"
    return text + "."
