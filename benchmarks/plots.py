"""Plots of bench results: latency against accuracy, per runtime, against resolution, and across devices.

Every function draws one PNG with the project's one plot engine (:mod:`ffnet_deploy.reporting.plots`: Agg without
pyplot, user strings as plain text, the PNG tag, atomic writes). Each returns the path it wrote, or ``None`` when the
data holds nothing that plot can show; then no file is written.

Latencies are the median (p50) per batch in milliseconds; an axis switches to a log scale when its values span more
than :data:`LOG_SPAN` times, so that a 1 ms and a 60 ms bar both stay readable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from ffnet_deploy.artifact.precisions import precision_names
from ffnet_deploy.benchmarks.results import BenchResult, BenchRow, fmt_ms
from ffnet_deploy.reporting.plots import (
    LOG_SPAN,
    PNG_TAG,
    bar_handles,
    figure,
    latency_axis,
    legend_below,
    not_our_plot,
    plain_log_ticks,
    plain_text,
    save,
)
from ffnet_deploy.reporting.plots import color as _color

__all__ = ["LOG_SPAN", "PNG_TAG", "not_our_plot", "plot_by_runtime", "plot_devices", "plot_latency_vs_top1",
           "plot_vs_resolution"]

# Series follow the precisions' declared order (ffnet_deploy.artifact.precisions).


class PlotCell(Protocol):
    """What :func:`plot_devices` reads of one cell."""

    p50: float
    imported: bool


class DeviceTable(Protocol):
    """What :func:`plot_devices` reads of a merged table (:class:`ffnet_deploy.benchmarks.report.MergedTable`)."""

    devices: list[str]

    def matrix(self) -> tuple[list[str], list[str], list[list[PlotCell | None]]]: ...


# --------------------------------------------------------------------------------------------------------------------
# Plots of one result
# --------------------------------------------------------------------------------------------------------------------


@plain_text
def plot_latency_vs_top1(result: BenchResult, path: str | Path, runtime: str | None = None, *,
                         may_replace: Callable[[Path], str | None] | None = None) -> Path | None:
    """Scatter of median latency (x) against published ImageNet top-1 (y), one line of markers per runtime ×
    precision, each model named once next to its fastest point.

    Only rows with a published top-1 take part, at the smallest batch size present.

    Args:
        result: The bench result.
        path: The PNG to write.
        runtime: Only this runtime's rows; all when ``None``.
        may_replace: Decides whether an existing ``path`` may be replaced (see :func:`ffnet_deploy.atomic.atomic_path`).

    Returns:
        ``path``, or ``None`` when no row has both a latency and a published top-1.
    """
    rows = [r for r in _ok(result) if r.published_top1 is not None and (runtime is None or r.runtime == runtime)]
    if not rows:
        return None
    batch = min(r.batch for r in rows)
    rows = [r for r in rows if r.batch == batch]
    series = _group(rows, _series_name)
    fig = _figure(8.5, 5.5)
    ax = fig.add_subplot()
    for i, (name, members) in enumerate(series.items()):
        color, marker = _color(i), "osD^v<>ph*"[i % 10]
        # one curve per family (FFNet variants form a curve; peers are separate points, not a curve)
        for family, same in _group(members, lambda r: r.family).items():
            same = sorted(same, key=lambda r: (r.published_top1, r.p50))
            connect = family == "ffnet" and len(same) > 1
            ax.plot([r.p50 for r in same], [r.published_top1 for r in same], marker=marker, markersize=7,
                    linewidth=1.2 if connect else 0, alpha=0.9, color=color, label=name)
    taken: dict[float, int] = {}  # labels already placed at (about) this top-1: stack the next one below
    for model, members in _group(rows, lambda r: r.model).items():
        fastest = min(members, key=lambda r: r.p50)
        level = round(fastest.published_top1 * 5) / 5
        shift = -11 * taken.get(level, 0)
        taken[level] = taken.get(level, 0) + 1
        ax.annotate(_display_name(model), (fastest.p50, fastest.published_top1), xytext=(-8, shift),
                    textcoords="offset points", ha="right", va="center", fontsize=9)
    latencies = [r.p50 for r in rows]
    latency_axis(ax, "x", latencies, f"median latency (ms per batch of {batch})")
    if ax.get_xscale() == "log":
        ax.set_xlim(min(latencies) / 1.6, max(latencies) * 1.25)
    else:
        ax.set_xlim(0, max(latencies) * 1.08)
    tops = [r.published_top1 for r in rows]
    ax.set_ylim(min(tops) - 0.8, max(tops) + 0.8)
    ax.set_ylabel("published ImageNet-1k top-1 (%)")
    ax.set_title(f"Accuracy vs latency on {result.device.name}" + (f" ({runtime})" if runtime else "")
                 + (" (imported measurements)" if all(r.source == "imported" for r in rows) else ""))
    ax.grid(True, which="both", alpha=0.3)
    handles = {}
    for line in ax.get_lines():
        handles.setdefault(line.get_label(), line)
    ax.legend(list(handles.values()), list(handles), title="runtime · precision", fontsize=8, title_fontsize=8,
              loc="lower right")
    if any(r.family != "ffnet" for r in rows):
        ax.text(0.01, 0.01, "lines join FFNet variants; other models are single points", transform=ax.transAxes,
                fontsize=7, color="0.4")
    return _save(fig, path, may_replace)


@plain_text
def plot_by_runtime(result: BenchResult, path: str | Path, *,
                    may_replace: Callable[[Path], str | None] | None = None) -> Path | None:
    """Grouped bars: one group per model, one bar per runtime × precision, the median latency on each bar.

    FFNet variants, mixer skeletons and peers get a panel each, so that one family's many bars do not squeeze the
    others.

    Returns:
        ``path``, or ``None`` when the result has no successful row.
    """
    rows = _ok(result)
    if not rows:
        return None
    series_names = list(_group(sorted(rows, key=_series_order), _series_name))
    colors = {name: i for i, name in enumerate(series_names)}
    panels = _group(rows, lambda r: r.family)
    widths = []
    for members in panels.values():
        categories = _categories(members)
        widths.append(sum(len(_group(c, _series_name)) for c in categories.values()) + len(categories))
    fig = _figure(min(max(7.0, 0.34 * max(widths) + 2.5), 22.0), 0.6 + 3.6 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (family, members) in zip(axes, panels.items(), strict=True):
        categories = _categories(members)
        positions, ticks = 0.0, []
        for label, cat_rows in categories.items():
            present = sorted(cat_rows, key=_series_order)
            start = positions
            for r in present:
                name = _series_name(r)
                bar = ax.bar(positions, r.p50, width=0.9, color=_color(colors[name]), label=name,
                             hatch="//" if r.source == "imported" else None, edgecolor="white", linewidth=0.5)
                ax.bar_label(bar, labels=[fmt_ms(r.p50)], rotation=90, fontsize=7, padding=2)
                positions += 1
            ticks.append(((start + positions - 1) / 2, label))
            positions += 1  # gap between groups
        ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks], rotation=30 if len(ticks) > 4 else 0,
                      ha="right" if len(ticks) > 4 else "center", fontsize=9)
        latency_axis(ax, "y", [r.p50 for r in members], "median latency (ms)", headroom=True)
        ax.set_title(_FAMILY_TITLES.get(family, family), fontsize=10, loc="left")
        ax.grid(True, axis="y", which="major", alpha=0.3)
        ax.set_xlim(-1, positions - 1)
    legend_below(fig, bar_handles(axes, series_names))
    fig.suptitle(f"Median latency per runtime on {result.device.name}" + _imported_note(rows), fontsize=12)
    return _save(fig, path, may_replace)


@plain_text
def plot_vs_resolution(result: BenchResult, path: str | Path, *,
                       may_replace: Callable[[Path], str | None] | None = None) -> Path | None:
    """Lines of median latency against input resolution (log y) for every model measured at two or more
    resolutions: the token-mixer comparison (``ffnet_1/ffnified``, ``ffnet_1/attention``, ...), one color per model and
    one line style per runtime × precision.

    Returns:
        ``path``, or ``None`` when no model appears at two resolutions.
    """
    rows = _ok(result)
    by_model = _group(rows, lambda r: r.model)
    models = [m for m, members in by_model.items() if len({r.resolution for r in members}) >= 2]
    if not models:
        return None
    rows = [r for r in rows if r.model in models]
    batch = min(r.batch for r in rows)
    rows = [r for r in rows if r.batch == batch]
    variants = list(_group(sorted(rows, key=_series_order), _series_name))
    styles = ["-", "--", ":", "-."]
    markers = "osD^v<>ph*"
    fig = _figure(8.5, 5.5)
    ax = fig.add_subplot()
    for mi, model in enumerate(models):
        for vi, variant in enumerate(variants):
            line = sorted((r for r in rows if r.model == model and _series_name(r) == variant),
                          key=lambda r: r.resolution)
            if len(line) < 2:
                continue
            ax.plot([r.resolution for r in line], [r.p50 for r in line], color=_color(mi),
                    linestyle=styles[vi % len(styles)], marker=markers[vi % len(markers)], markersize=5,
                    label=f"{model} · {variant}" if len(variants) > 1 else model)
    resolutions = sorted({r.resolution for r in rows})
    ax.set_xticks(resolutions, [str(x) for x in resolutions])
    ax.set_xlabel("input resolution (pixels per side)")
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis)
    ax.set_ylabel(f"median latency (ms per batch of {batch}, log scale)")
    ax.grid(True, which="both", alpha=0.3)
    single = f" ({variants[0]})" if len(variants) == 1 else ""
    ax.set_title(f"Latency vs resolution on {result.device.name}{single}")
    ax.legend(fontsize=8, ncol=2 if len(ax.get_lines()) > 8 else 1, loc="upper left")
    return _save(fig, path, may_replace)


# --------------------------------------------------------------------------------------------------------------------
# Plot of a merged table
# --------------------------------------------------------------------------------------------------------------------


@plain_text
def plot_devices(table: DeviceTable, path: str | Path, *,
                 may_replace: Callable[[Path], str | None] | None = None) -> Path | None:
    """Grouped horizontal bars: one group per table row (model × precision × resolution), one bar and color per
    column (device × runtime), the median latency at the end of each bar; imported cells are hatched.

    Returns:
        ``path``, or ``None`` when the table has no cell.
    """
    row_labels, col_labels, cells = table.matrix()
    present = [(i, row) for i, row in enumerate(cells) if any(c is not None for c in row)]
    if not present:
        return None
    used = [j for j in range(len(col_labels)) if any(row[j] is not None for _, row in present)]
    bars = sum(sum(row[j] is not None for j in used) for _, row in present)
    height = 0.2 * bars + 0.25 * len(present) + 1.8 + 0.25 * (len(used) + 1) // 2
    fig = _figure(10.0, min(max(height, 3.5), 40.0))
    ax = fig.add_subplot()
    y, ticks, values, any_imported = 0.0, [], [], False
    for i, row in reversed(present):  # first table row on top
        start = y
        for j in reversed(used):
            cell = row[j]
            if cell is None:
                continue
            any_imported |= cell.imported
            bar = ax.barh(y, cell.p50, height=0.85, color=_color(j), label=col_labels[j],
                          hatch="//" if cell.imported else None, edgecolor="white", linewidth=0.5)
            ax.bar_label(bar, labels=[fmt_ms(cell.p50) + ("†" if cell.imported else "")], fontsize=7, padding=2)
            values.append(cell.p50)
            y += 1
        ticks.append(((start + y - 1) / 2, row_labels[i]))
        y += 0.8
    ax.set_yticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=9)
    ax.set_ylim(-0.9, y - 0.9)
    latency_axis(ax, "x", values, "median latency (ms per batch)", headroom=True)
    ax.grid(True, axis="x", which="major", alpha=0.3)
    handles = {c.get_label(): c.patches[0] for c in ax.containers}
    order = [col_labels[j] for j in used]
    fig.legend([handles[label] for label in order], order, fontsize=8, loc="outside lower center",
               ncol=2 if len(order) > 3 else len(order), frameon=False)
    devices = ", ".join(table.devices)
    fig.suptitle(f"Median latency across devices: {devices}", fontsize=12)
    if any_imported:
        ax.set_title("hatched, †: imported measurements", fontsize=8, loc="right")
    return _save(fig, path, may_replace)


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------

_FAMILY_TITLES = {"ffnet": "FFNet variants", "mixer": "token mixers (FFNet skeleton)", "peer": "peer models"}


def _ok(result: BenchResult) -> list[BenchRow]:
    return [r for r in result.ok_rows() if r.p50 is not None and r.p50 > 0]


def _series_name(row: BenchRow) -> str:
    runtime = row.runtime + (f" ({row.compute_units})" if row.compute_units else "")
    return f"{runtime} {row.precision}"


def _series_order(row: BenchRow) -> tuple:
    order = precision_names()
    p = order.index(row.precision) if row.precision in order else len(order)
    return (row.runtime, row.compute_units or "", p, row.precision)


def _categories(rows: Sequence[BenchRow]) -> dict[str, list[BenchRow]]:
    """The bar groups: one per model, or per model and resolution (and batch) where the model has several."""
    by_model = _group(rows, lambda r: r.model)
    groups: dict[str, list[BenchRow]] = {}
    for model, same in by_model.items():
        several_res, several_batch = len({r.resolution for r in same}) > 1, len({r.batch for r in same}) > 1
        for r in sorted(same, key=lambda r: (r.resolution, r.batch)):
            label = model + (f" @{r.resolution}" if several_res else "") + (f" b{r.batch}" if several_batch else "")
            groups.setdefault(label, []).append(r)
    return groups


def _group(rows: Iterable[BenchRow], key: Callable[[BenchRow], str]) -> dict[str, list[BenchRow]]:
    groups: dict[str, list[BenchRow]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return groups


def _imported_note(rows: Sequence[BenchRow]) -> str:
    return " (hatched: imported)" if any(r.source == "imported" for r in rows) else ""


def _figure(width: float, height: float):
    return figure(width, height, "bench plots")


def _save(fig, path: str | Path, may_replace: Callable[[Path], str | None] | None) -> Path:
    return save(fig, path, may_replace, "plot")


def _display_name(model: str) -> str:
    """A peer's paper name ("Swin-T" for swin_tiny_patch4_window7_224); other models keep their row name."""
    from ffnet_deploy.benchmarks.specs import PEERS

    return next((p.display for p in PEERS if model in (p.name, p.timm_id)), model)
