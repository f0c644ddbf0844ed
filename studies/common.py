"""Shared machinery of the studies: interleaved timing of plain calls and of runners, and results written as Markdown
+ JSON.

The studies are one-off investigations kept outside the installed package (as timm keeps its scripts); each runs from
the repository root as ``python -m studies.<name>``. The ``bench`` product lives in ``benchmarks/`` and imports none
of them.

Timing on a shared CPU is noisy, so benchmarks report *ratios measured in one run*: the contenders are timed in
interleaved rounds (A, B, A, B, ...) so that a slow phase of the machine hits both alike, and the medians are
compared.

Where results go: every benchmark takes ``--out DIR`` and writes ``DIR/<name>.{md,json}``. The default is
``./benchmarks/results``, relative to the directory the command runs in (in a checkout of this repository, that is
the committed ``benchmarks/results`` folder). Nothing is ever written into the installed package; ``--no-write``
prints the Markdown only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ffnet_deploy.atomic import write_text
from ffnet_deploy.environment import environment_info

if TYPE_CHECKING:
    import numpy as np

    from ffnet_deploy.runtimes import BaseRunner

RESULTS_DIR = Path("benchmarks") / "results"
"""Default ``--out``: relative, so it resolves against the current directory when results are written."""


def interleaved_timing(contenders: dict[str, Callable[[], object]], *, warmup: int = 5, rounds: int = 30,
                       per_round: int = 1) -> dict[str, dict]:
    """Time each callable in interleaved rounds with the project's one timing loop
    (:func:`ffnet_deploy.runtimes.timing.measure`).

    Args:
        contenders: Name -> zero-argument callable (one inference).
        warmup: Untimed calls of each contender first.
        rounds: Rounds; each round times every contender ``per_round`` times, in turn.
        per_round: Consecutive timed calls per contender per round.

    Returns:
        Name -> ``{"median_ms", "mean_ms", "min_ms", "p90_ms", "samples"}``.
    """
    from ffnet_deploy.runtimes.timing import CallContender, Protocol, latency_stats, measure

    def repeated(fn: Callable[[], object]) -> Callable[[], object]:
        return fn if per_round == 1 else (lambda: [fn() for _ in range(per_round)])

    timed = [CallContender(name, repeated(fn)) for name, fn in contenders.items()]
    measure(timed, Protocol(warmup=warmup, warmup_time_s=0.0, min_iters=rounds, min_time_s=0.0))
    out = {}
    for c in timed:
        if c.error:
            raise RuntimeError(f"{c.name}: {c.error}")
        stats = latency_stats([ms / per_round for ms in c.samples_ms])
        out[c.name] = {"median_ms": stats["p50"], "mean_ms": stats["mean"], "min_ms": stats["min"],
                       "p90_ms": stats["p90"], "samples": len(c.samples_ms) * per_round}
    return out


def runner_timing(runners: dict[str, BaseRunner], feed: dict[str, np.ndarray], *, warmup: int = 5,
                  rounds: int = 30) -> dict[str, dict]:
    """Time runners in interleaved rounds with the project's one timing loop; each sample is the runner's own
    engine time (:attr:`~ffnet_deploy.runtimes.base.BaseRunner.last_latency_ms`), as ``bench`` takes it.

    Args:
        runners: Name -> runner. An active runner is used as it is and left active; an inactive one is activated
            for the timing and released after.
        feed: The input, fed every time.
        warmup: Untimed runs of each runner first.
        rounds: Rounds; each round runs every runner once, in turn.

    Returns:
        Name -> ``{"median_ms", "mean_ms", "min_ms", "p90_ms", "samples"}``, as :func:`interleaved_timing`.
    """
    from ffnet_deploy.runtimes.timing import Contender, Protocol, latency_stats, measure

    timed = [Contender(name, lambda r=r: r, feed, runner=r if r.is_active else None) for name, r in runners.items()]
    measure(timed, Protocol(warmup=warmup, warmup_time_s=0.0, min_iters=rounds, min_time_s=0.0))
    out = {}
    for c in timed:
        if c.error:
            raise RuntimeError(f"{c.name}: {c.error}")
        stats = latency_stats(c.samples_ms)
        out[c.name] = {"median_ms": stats["p50"], "mean_ms": stats["mean"], "min_ms": stats["min"],
                       "p90_ms": stats["p90"], "samples": len(c.samples_ms)}
    return out


def command_line() -> str:
    """The command that produced the results, as a user would type it."""
    module = sys.modules["__main__"].__spec__
    if module is not None:
        return shlex.join(["python", "-m", module.name, *sys.argv[1:]])
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):  # a script of this repository: its path from the repository root
        script = script.relative_to(Path(__file__).resolve().parents[1])
    return shlex.join(["python", script.as_posix(), *sys.argv[1:]])


def add_output_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--out DIR`` and ``--no-write``, the options :func:`print_and_write` reads."""
    p.add_argument("--out", type=Path, default=RESULTS_DIR, metavar="DIR",
                   help=f"folder for <name>.md and <name>.json (default: ./{RESULTS_DIR.as_posix()})")
    p.add_argument("--no-write", action="store_true", help="print only; write no result files")
    return p


def standard_parser(description: str, rounds: int) -> argparse.ArgumentParser:
    """The options every latency benchmark takes: variant, resolution, batch, threads, rounds, --out, --no-write."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--variant", default="ffnet_1")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=rounds)
    return add_output_options(p)


def export_study_parser(description: str) -> argparse.ArgumentParser:
    """The options of the export studies (a full-size model to a phone format): variant, resolution, the photo
    crops validation runs on; the caller adds its own and then :func:`add_output_options`."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--variant", default="ffnet_1")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--images", type=int, default=16)
    return p


def print_and_write(stem: str, result: dict, to_markdown: Callable[[dict], str], args: argparse.Namespace) -> str:
    """Print the Markdown of ``result`` and write ``args.out/<stem>.{md,json}`` unless ``args.no_write`` (the options
    of :func:`add_output_options`); returns the Markdown."""
    md = to_markdown(result)
    print(md)
    if not args.no_write:
        write_results(stem, md, result, results_dir=args.out)
    return md


def run_standard(stem: str, description: str, run: Callable[..., dict], to_markdown: Callable[[dict], str],
                 argv: list[str] | None, rounds: int) -> dict:
    """Parse the standard options, run, print the Markdown, and write ``--out/<stem>.{md,json}`` unless --no-write.

    Args:
        stem: File name of the results, without suffix.
        description: ``--help`` text.
        run: Called as ``run(variant, resolution, batch, threads, rounds)``; returns JSON-ready results.
        to_markdown: Renders the results.
        argv: Command-line arguments; ``None`` reads ``sys.argv``.
        rounds: Default ``--rounds``.
    """
    args = standard_parser(description, rounds).parse_args(argv)
    result = run(args.variant, args.resolution, args.batch, args.threads, args.rounds)
    print_and_write(stem, result, to_markdown, args)
    return result


# --------------------------------------------------------------------------------------------------------------------
# What the export studies record (studies.executorch_export, studies.litert_export)
# --------------------------------------------------------------------------------------------------------------------

DELEGATION_KEYS = ("delegated_subgraphs", "delegated_nodes", "not_delegated_nodes", "not_delegated")
"""What an export study keeps of a manifest's ``details.delegation``."""


def delegation_summary(details: dict[str, Any]) -> dict[str, Any]:
    """The delegation counts of a manifest's ``details`` (:data:`DELEGATION_KEYS`)."""
    return {k: details["delegation"][k] for k in DELEGATION_KEYS}


def parity_numbers(metrics: Any) -> dict[str, float]:
    """Max absolute error, the logit range and their ratio, of a parity check's metrics."""
    return {"max_abs_error": metrics.max_abs_error, "logit_range": metrics.reference_range,
            "relative_to_range": metrics.max_abs_error / metrics.reference_range}


def outside_delegate(not_delegated: dict[str, int]) -> str:
    """``"aten.gelu x2, ..."`` or ``"none"``: the operators left outside the delegate, for a Markdown cell."""
    return ", ".join(f"{k} x{v}" for k, v in not_delegated.items()) or "none"


def versions_line(versions: dict[str, str]) -> str:
    """``"executorch 1.5.1, torch 2.14.1"``: the backend versions of a manifest, sorted."""
    return ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))


def write_results(stem: str, markdown: str, data: dict, results_dir: str | Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.json`` atomically, both stamped with the command and the environment.

    Args:
        stem: File name without suffix.
        markdown: The rendered results.
        data: The JSON-ready results.
        results_dir: Target folder, created if missing; a relative path resolves against the current directory.

    Returns:
        The paths of the Markdown and JSON files.
    """
    results_dir = Path(results_dir)
    env = environment_info()
    cmd = command_line()
    payload = {"command": cmd, "environment": env, **data}
    header = (f"<!-- generated by: {cmd} -->\n\nCommand: `{cmd}`\n\nMachine: {env['cpu']} ({env['cpu_count']} cpus; "
              f"ISA class {env['isa_class']}: {', '.join(env['isa_flags'])}), torch {env['versions'].get('torch')}\n\n")
    md = write_text(results_dir / f"{stem}.md", header + markdown.rstrip() + "\n", "benchmark")
    js = write_text(results_dir / f"{stem}.json", json.dumps(payload, indent=2) + "\n", "benchmark")
    return md, js
