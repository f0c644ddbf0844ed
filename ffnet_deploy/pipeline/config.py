"""What a pipeline run is asked to do: :class:`PipelineConfig`, read from options and an optional TOML file, and the
job graph it expands to (:func:`plan_jobs`).

A pipeline is one *job* per artifact, ``<format>-<precision>`` (``onnx-int8``), each running export -> validate ->
bench, after two shared stages (inspect and reparameterize the checkpoint). ``deploy.toml`` holds the same settings
as the command line, so a CI job can check in what it deploys::

    checkpoint = "ffnet_1.pth.tar"
    output = "out/ffnet_1"
    formats = ["onnx", "openvino"]
    precisions = ["fp32", "int8"]
    calib = "data/calib"
    eval_data = "data/val"
    bench = true

Keys are the long option names with ``_`` for ``-`` (``bench_iters``, ``trust_checkpoint``). Options given on the
command line override the file; relative paths in the file resolve against the file's folder.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ffnet_deploy.artifact.formats import demo_formats, format_names, get_format
from ffnet_deploy.artifact.precisions import is_calibrated, precision_names
from ffnet_deploy.errors import ConfigError

# The formats and precisions (all, the demo's, where each runs, which need calibration) are the registries'
# (ffnet_deploy.artifact.formats, ffnet_deploy.artifact.precisions): a registered format is a pipeline job too.


@dataclass(frozen=True)
class Job:
    """One artifact: its format and precision; ``id`` names its folder and its ``--only`` selector."""

    format: str
    precision: str

    @property
    def id(self) -> str:
        return f"{self.format}-{self.precision}"

    @property
    def selector(self) -> str:
        return f"{self.format}/{self.precision}"


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of one pipeline run (the ``pipeline`` command's options)."""

    output: Path
    checkpoint: Path | None = None
    variant: str | None = None
    formats: tuple[str, ...] | None = None  # None: every registered format
    precisions: tuple[str, ...] | None = None  # None: every stored precision
    calib: str | None = None  # calibration data for int8 (an ImageFolder, a folder of images, or "digits")
    calib_size: int | None = None  # default: the quantizer's (300), or what the data holds for small sets
    eval_data: str | None = None  # labelled (or unlabelled) data for validation; default: calib, else synthetic
    eval_limit: int | None = None  # validate on at most this many images
    resolution: int | None = None
    bench: bool = True
    threads: int | None = None
    min_iters: int = 50
    min_time_s: float = 5.0
    resume: bool = False
    force: bool = False
    demo: bool = False
    only: tuple[str, ...] = ()  # job selectors ("onnx/int8"); empty = every job
    trust: bool = False
    device_name: str | None = None

    def __post_init__(self) -> None:
        if self.formats is None:
            object.__setattr__(self, "formats", format_names())
        if self.precisions is None:
            object.__setattr__(self, "precisions", precision_names(stored=True))

    def validate(self) -> None:
        """Check the settings on their own.

        Raises:
            ConfigError: One line naming the option.
        """
        if not self.demo and self.checkpoint is None:
            raise ConfigError("pipeline | pass --checkpoint FILE (or --demo, which needs no files)")
        if self.demo and self.checkpoint is not None:
            raise ConfigError("pipeline | --demo trains its own checkpoint; leave out --checkpoint")
        for name, values, allowed in (("--formats", self.formats, format_names()),
                                      ("--precisions", self.precisions, precision_names(stored=True))):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ConfigError(f"pipeline | {name} takes a comma-separated list of {', '.join(allowed)}; "
                                  f"got {','.join(values) or 'nothing'}")
        if self.resume and self.force:
            raise ConfigError("pipeline | --resume keeps what is done and --force starts over; pass one of them")
        if self.min_iters < 1 or self.min_time_s < 0:
            raise ConfigError("pipeline | --bench-iters must be >= 1 and --bench-time >= 0")
        known = {j.selector for j in all_jobs(self.formats, self.precisions)}
        for sel in self.only:
            if sel not in known:
                raise ConfigError(f"pipeline | --only {sel} is not a job of this pipeline; choose from "
                                  f"{', '.join(sorted(known))} (format/precision)")

    def check_data(self) -> None:
        """``--calib`` and ``--eval-data`` name usable data (checked before a run, not by ``--plan``).

        Raises:
            ConfigError: One line naming the option and the accepted forms.
        """
        from ffnet_deploy.data.sources import source_from_spec

        for flag, spec in (("--calib", self.calib), ("--eval-data", self.eval_data)):
            if spec is not None:
                try:
                    source_from_spec(spec)
                except ConfigError as err:
                    raise ConfigError(f"pipeline | {flag}: {err}") from None

    def jobs(self) -> list[Job]:
        """The jobs this run executes: every format x precision, or the ``--only`` ones."""
        jobs = all_jobs(self.formats, self.precisions)
        return [j for j in jobs if not self.only or j.selector in self.only]

    def settings(self) -> dict:
        """What determines the results (recorded in the report; paths as given)."""
        return {"formats": list(self.formats), "precisions": list(self.precisions), "calib": self.calib,
                "calib_size": self.calib_size, "eval_data": self.eval_data, "eval_limit": self.eval_limit,
                "resolution": self.resolution, "bench": self.bench, "threads": self.threads, "demo": self.demo,
                "min_iters": self.min_iters, "min_time_s": self.min_time_s}


def all_jobs(formats: Sequence[str], precisions: Sequence[str]) -> list[Job]:
    return [Job(f, p) for f in formats for p in precisions]


def split_list(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"a,b"`` -> ``("a", "b")``; a list passes through; ``None`` stays ``None``."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(dict.fromkeys(str(t).strip() for t in items if str(t).strip()))


# -- TOML ---------------------------------------------------------------------------------------------------------

TOML_ALIASES = {"bench_iters": "min_iters", "bench_time": "min_time_s", "trust_checkpoint": "trust"}
"""deploy.toml keys are the long option names; these three name config fields of another name."""
_FIELD_ONLY = {"resume", "force", "only", *TOML_ALIASES.values()}  # not settable in the file, or only by alias


def toml_keys() -> set[str]:
    """Every key a ``deploy.toml`` may hold."""
    return {f.name for f in dataclasses.fields(PipelineConfig)} - _FIELD_ONLY | set(TOML_ALIASES)


_PATH_KEYS = ("checkpoint", "output")
_DATA_KEYS = ("calib", "eval_data")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The settings of a ``deploy.toml`` (see the module docstring), paths resolved against its folder.

    Raises:
        ConfigError: Unreadable or invalid TOML, an unknown key (named, with the known ones), or a wrong type.
    """
    from ffnet_deploy.data.sources import is_digits_spec

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"pipeline | --config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"pipeline | --config {path}: cannot read it ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"pipeline | --config {path}: not valid TOML ({err})") from None
    known = toml_keys()
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"pipeline | --config {path}: unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(known))}")
    base = path.parent
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = TOML_ALIASES.get(key, key)
        if key in ("formats", "precisions"):
            if not isinstance(value, (list, str)):
                raise ConfigError(f"pipeline | --config {path}: {key} must be a list of strings")
            out[key] = split_list(value)
        elif key in _PATH_KEYS:
            out[key] = base / str(value) if not Path(str(value)).is_absolute() else Path(str(value))
        elif key in _DATA_KEYS:
            text = str(value)
            out[key] = text if is_digits_spec(text) or Path(text).is_absolute() else str(base / text)
        else:
            out[key] = value
    return out


def build_config(file_settings: Mapping[str, Any], cli_settings: Mapping[str, Any]) -> PipelineConfig:
    """A validated config from the TOML file's settings, overridden by every command-line option that was given
    (``None`` means not given)."""
    merged = {**file_settings, **{k: v for k, v in cli_settings.items() if v is not None}}
    if merged.get("demo"):
        merged.setdefault("formats", demo_formats())
        merged.setdefault("calib", "digits")
        merged.setdefault("eval_data", "digits")
    if "output" not in merged:
        raise ConfigError("pipeline | pass --output DIR (or set output in --config)")
    for key in ("checkpoint", "output"):
        if merged.get(key) is not None:
            merged[key] = Path(merged[key])
    try:
        config = PipelineConfig(**merged)
    except TypeError as err:
        raise ConfigError(f"pipeline | invalid settings: {err}") from None
    config.validate()
    return config


@dataclass
class PlannedJob:
    """A job as :func:`plan_jobs` prints it: what it does, what it needs, and how to run it alone."""

    job: Job
    command: str
    needs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"id": self.job.id, "format": self.job.format, "precision": self.job.precision,
                "stages": ["export", "validate", "bench"], "needs": self.needs,
                "runs_on": get_format(self.job.format).runs_on, "command": self.command}


def plan_jobs(config: PipelineConfig, argv: Sequence[str]) -> dict:
    """The job graph as JSON: shared stages, one job per artifact with the command that runs it alone into the same
    output layout, and the command that merges the jobs' results."""
    import shlex

    base = [a for a in _strip_option(list(argv), ("--plan", "--only", "--resume", "--force"))]
    jobs = []
    for job in config.jobs():
        needs = ["inspect", "reparameterize"] + (["calibration"] if is_calibrated(job.precision) else [])
        jobs.append(PlannedJob(job, shlex.join(["ffnet-deploy", *base, "--only", job.selector]), needs).to_dict())
    out = str(config.output)
    return {"schema": "ffnet-deploy.pipeline-plan/1", "output": out,
            "shared": [{"stage": "inspect"}, {"stage": "reparameterize"}],
            "jobs": jobs,
            "after": ["recommend", "report"],
            "merge": f"ffnet-deploy report merge {out} [OTHER_OUTPUT_DIRS...] --out {out}-merged"}


def _strip_option(argv: list[str], names: Sequence[str]) -> list[str]:
    """``argv`` without the options ``names`` (flags, ``--opt value`` and ``--opt=value``)."""
    out, skip = [], False
    takes_value = {"--only"}
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in names:
            skip = name in takes_value and "=" not in arg
            continue
        out.append(arg)
    return out
