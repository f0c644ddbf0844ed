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
command line override the file; relative paths in the file resolve against the file's folder. The file is read
through its typed model (:class:`DeployToml`): a key of the wrong type (``bench_iters = "5"``, ``demo = "false"``,
``device_name = {x = 1}``), a value out of range (``resolution = -32``, ``bench_time = nan``) or an unknown key is
one line naming the key, before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict

from ffnet_deploy.artifact.formats import demo_formats, format_names, get_format
from ffnet_deploy.artifact.precisions import is_calibrated, precision_names
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.schemas import NonEmpty, NonNegative, PositiveInt, constraint, validate_python

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
    every_precision: bool = False  # precisions not given: each format makes the ones it has, none is skipped

    def __post_init__(self) -> None:
        if self.formats is None:
            object.__setattr__(self, "formats", format_names())
        if self.precisions is None:
            object.__setattr__(self, "precisions", precision_names(stored=True))
            object.__setattr__(self, "every_precision", True)

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
        self._check_types()
        if self.min_iters < 1 or not math.isfinite(self.min_time_s) or self.min_time_s < 0:
            raise ConfigError("pipeline | --bench-iters must be >= 1 and --bench-time a finite number >= 0")
        if self.resolution is not None and (self.resolution < 32 or self.resolution % 32):
            raise ConfigError(f"pipeline | --resolution must be a positive multiple of 32 (FFNet downsamples by 32), "
                              f"got {self.resolution}; try {max(32, round(self.resolution / 32) * 32)}")
        for flag, value in (("--eval-limit", self.eval_limit), ("--calib-size", self.calib_size),
                            ("--threads", self.threads)):
            if value is not None and value < 1:
                raise ConfigError(f"pipeline | {flag} must be at least 1, got {value}")
        known = {j.selector for j in all_jobs(self.formats, self.precisions)}
        for sel in self.only:
            if sel not in known:
                raise ConfigError(f"pipeline | --only {sel} is not a job of this pipeline; choose from "
                                  f"{', '.join(sorted(known))} (format/precision)")

    def _check_types(self) -> None:
        """Each setting has its type (for callers of the Python API; the CLI and :func:`read_toml` type them)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = _TYPES.get(f.name)
            if kind is None or value is None:
                continue
            ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
            if not ok:
                raise ConfigError(f"pipeline | {f.name} must be {_TYPE_NAMES[kind]}, got {value!r}")

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
        if self.every_precision:  # an asked-for combination a format cannot make is a skipped job; a default is not
            jobs = [j for j in jobs if j.precision in get_format(j.format).precisions]
        return [j for j in jobs if not self.only or j.selector in self.only]

    def settings(self) -> dict:
        """What determines the results (recorded in the report; paths as given)."""
        return {"formats": list(self.formats), "precisions": list(self.precisions), "calib": self.calib,
                "calib_size": self.calib_size, "eval_data": self.eval_data, "eval_limit": self.eval_limit,
                "resolution": self.resolution, "bench": self.bench, "threads": self.threads, "demo": self.demo,
                "min_iters": self.min_iters, "min_time_s": self.min_time_s}


_TYPES: dict[str, Any] = {"bench": bool, "resume": bool, "force": bool, "demo": bool, "trust": bool,
                          "calib_size": int, "eval_limit": int, "resolution": int, "threads": int, "min_iters": int,
                          "min_time_s": (int, float), "variant": str, "calib": str, "eval_data": str,
                          "device_name": str, "output": Path, "checkpoint": (str, Path)}
_TYPE_NAMES = {bool: "true or false", int: "an integer", (int, float): "a number", str: "a string", Path: "a path",
               (str, Path): "a path"}


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
# not settable in the file, or only by alias
_FIELD_ONLY = {"resume", "force", "only", "every_precision", *TOML_ALIASES.values()}


def toml_keys() -> set[str]:
    """Every key a ``deploy.toml`` may hold."""
    return {f.name for f in dataclasses.fields(PipelineConfig)} - _FIELD_ONLY | set(TOML_ALIASES)


MAX_TOML_BYTES = 1 << 20
"""The largest ``deploy.toml`` read (a settings file is a few hundred bytes)."""


def _resolution(value: int) -> bool:
    return value >= 32 and value % 32 == 0


class DeployToml(BaseModel):
    """The keys of a ``deploy.toml`` and their types (the module docstring); a TOML table is validated in strict mode:
    ``"5"`` is not an integer, ``"false"`` not a boolean, ``nan`` not a number of seconds."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None
    output: str | None = None
    variant: NonEmpty | None = None
    formats: list[str] | str | None = None
    precisions: list[str] | str | None = None
    calib: NonEmpty | None = None
    calib_size: PositiveInt | None = None
    eval_data: NonEmpty | None = None
    eval_limit: PositiveInt | None = None
    resolution: Annotated[int, constraint(_resolution, "must be a positive multiple of 32 (FFNet downsamples by 32)")] \
        | None = None
    bench: bool | None = None
    threads: PositiveInt | None = None
    bench_iters: PositiveInt | None = None
    bench_time: NonNegative | None = None
    demo: bool | None = None
    trust_checkpoint: bool | None = None
    device_name: NonEmpty | None = None


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
    from ffnet_deploy.inputs import read_bounded

    path = Path(path)
    try:
        raw = read_bounded(path, "TOML config", MAX_TOML_BYTES, ConfigError)
    except ConfigError as err:
        raise ConfigError(f"pipeline | --config: {err}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"pipeline | --config {path}: cannot read it ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"pipeline | --config {path}: not valid TOML ({err})") from None
    except RecursionError:
        raise ConfigError(f"pipeline | --config {path}: not valid TOML (nested too deeply)") from None
    known = toml_keys()
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"pipeline | --config {path}: unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(known))}")
    validate_python(data, DeployToml, f"--config {path}", "pipeline", "fix that key of the file")
    base = path.parent
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = TOML_ALIASES.get(key, key)
        if key in ("formats", "precisions"):
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


def job_device(job: Job, bench: bool) -> str:
    """The device kind ``job`` needs: its format's ``device`` when it is timed, else what exporting and checking it
    needs (a Core ML job exports and checks on any machine, but its latency needs a Mac)."""
    spec = get_format(job.format)
    return spec.device if bench else spec.export_device


@dataclass
class PlannedJob:
    """A job as :func:`plan_jobs` prints it: what it does, what it needs, and how to run it alone."""

    job: Job
    command: str
    device: str
    needs: list[str] = field(default_factory=list)

    artifact: str = ""  # the job's model file in the output layout

    def to_dict(self) -> dict:
        spec = get_format(self.job.format)
        out = {"id": self.job.id, "format": self.job.format, "precision": self.job.precision,
               "stages": ["export", "validate", "bench"], "needs": self.needs,
               "runs_on": spec.runs_on, "device": self.device, "command": self.command}
        if spec.device_steps:  # a phone runs no pipeline: its own job is these steps, after this one
            out["device_job"] = {"id": f"{self.job.id}-device", "needs": [self.job.id],
                                 "steps": [step.format(artifact=self.artifact, id=self.job.id)
                                           for step in spec.device_steps]}
        return out


EMITS = ("json", "github-matrix")
"""What ``pipeline --plan --emit`` prints: the job graph, or a GitHub Actions ``strategy.matrix``."""

RUNNER_LABELS: dict[str, tuple[str, ...]] = {
    "cpu": ("ubuntu-latest",),
    "mac": ("macos-latest",),
    "nvidia-gpu": ("self-hosted", "linux", "nvidia-gpu"),
    "android": ("self-hosted", "android"),
}
"""The GitHub Actions ``runs-on`` labels of each device kind a job may need (:attr:`FormatSpec.device`), by default:
GitHub-hosted runners where GitHub has them, else the labels of a self-hosted runner that holds the device (a
Jetson or a GPU server registered with ``nvidia-gpu``, a host with a phone on adb with ``android``). ``--runner
KIND=LABEL,...`` replaces them."""


def check_plan_options(*, plan: bool, emit: str, runners: Sequence[str] | None) -> None:
    """Refuse ``--emit`` or ``--runner`` that do not apply: an unknown emit, either without ``--plan``, ``--runner``
    without ``--emit github-matrix``."""
    if emit not in EMITS:
        raise ConfigError(f"pipeline | --emit {emit!r}: choose one of {', '.join(EMITS)}")
    if (emit != "json" or runners) and not plan:
        raise ConfigError(f"pipeline | {'--runner' if runners else '--emit'} applies to --plan; add --plan")
    if runners and emit != "github-matrix":
        raise ConfigError("pipeline | --runner applies to --emit github-matrix; add it")


def parse_runners(values: Sequence[str] | None) -> dict[str, tuple[str, ...]]:
    """``--runner KIND=LABEL[,LABEL...]`` values -> the labels per device kind, defaults for the kinds not given.

    Raises:
        ConfigError: For a value without ``=``, an unknown kind, or no label.
    """
    labels = dict(RUNNER_LABELS)
    kinds = sorted({*RUNNER_LABELS, *(get_format(name).device for name in format_names())})
    for value in values or ():
        kind, sep, rest = value.partition("=")
        names = tuple(label.strip() for label in rest.split(",") if label.strip())
        if not sep or not names:
            raise ConfigError(f"pipeline | --runner {value!r}: write KIND=LABEL[,LABEL...], e.g. "
                              "--runner nvidia-gpu=self-hosted,jetson")
        if kind.strip() not in kinds:
            raise ConfigError(f"pipeline | --runner {value!r}: unknown device kind {kind.strip()!r}; "
                              f"choose from {', '.join(kinds)}")
        labels[kind.strip()] = names
    return labels


def github_matrix(plan: dict, runners: Mapping[str, Sequence[str]]) -> dict:
    """The plan as a GitHub Actions ``strategy.matrix`` value: ``{"include": [...]}``, one entry per job.

    Each entry names the job (``job``, also the name to upload its output folder under), the device it needs, the
    runner labels that give it one (``runs-on``: a string for one label, a list for several, as GitHub takes them)
    and the ``--only`` command that runs it into the plan's output layout. A last job downloads every job's output
    folder and runs ``report merge`` over them (see ``docs/ci/pipeline-matrix-workflow.yml``).
    """
    include = []
    for job in plan["jobs"]:
        labels = list(runners.get(job["device"], RUNNER_LABELS["cpu"]))
        include.append({"job": job["id"], "device": job["device"],
                        "runs-on": labels[0] if len(labels) == 1 else labels, "command": job["command"]})
    return {"include": include}


def plan_jobs(config: PipelineConfig, argv: Sequence[str]) -> dict:
    """The job graph as JSON: shared stages, one job per artifact with the command that runs it alone into the same
    output layout, and the command that merges the jobs' results."""
    import shlex

    base = [a for a in _strip_option(list(argv), ("--plan", "--only", "--resume", "--force", "--emit", "--runner"))]
    jobs = []
    for job in config.jobs():
        needs = ["inspect", "reparameterize"] + (["calibration"] if is_calibrated(job.precision) else [])
        model = config.output / "artifacts" / job.id / f"model{get_format(job.format).main_suffix}"
        jobs.append(PlannedJob(job, shlex.join(["ffnet-deploy", *base, "--only", job.selector]),
                               job_device(job, config.bench), needs, str(model)).to_dict())
    out = str(config.output)
    from ffnet_deploy.pipeline.results import PLAN_SCHEMA

    return {"schema": PLAN_SCHEMA, "output": out,
            "shared": [{"stage": "inspect"}, {"stage": "reparameterize"}],
            "jobs": jobs,
            "after": ["recommend", "report"],
            "merge": f"ffnet-deploy report merge {out} [OTHER_OUTPUT_DIRS...] --out {out}-merged"}


def _strip_option(argv: list[str], names: Sequence[str]) -> list[str]:
    """``argv`` without the options ``names`` (flags, ``--opt value`` and ``--opt=value``)."""
    out, skip = [], False
    takes_value = {"--only", "--emit", "--runner"}
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
