"""The pipeline's files, typed: ``results.json``, ``jobs/<id>.json`` and ``.pipeline/state.json``.

Each file kind is a pydantic model with a reader that validates the way the manifest reader does
(:mod:`ffnet_deploy.schemas`): a file that is not valid JSON, a list where an object belongs, a wrong type anywhere,
an unknown format or status, a latency that is negative or not finite, a missing field, is one
:class:`~ffnet_deploy.errors.ConfigError` line naming the file and the field, never a traceback, and every read goes
through the regular-file check and a size cap.

Schemas (``ffnet-deploy/<kind>/1``; the dot spelling of earlier versions, ``ffnet-deploy.<kind>/1``, is read too):

- ``pipeline``: :class:`PipelineResults`, a run's ``results.json`` (what :mod:`ffnet_deploy.pipeline.report`
  renders);
- ``pipeline-job``: :class:`JobRecord`, one job's outcome (``jobs/<id>.json``); ``results.json`` holds them too;
- ``pipeline-state``: :class:`StateFile`, the finished stages of an output folder (``--resume``);
- ``pipeline-plan``: the job graph ``--plan`` prints (written only).

Non-finite metrics are the strings ``"nan"``, ``"inf"``, ``"-inf"`` (the project's convention).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, ValidationInfo, model_validator

from ffnet_deploy.artifact.formats import format_names
from ffnet_deploy.artifact.precisions import precision_names
from ffnet_deploy.benchmarks.results import Device
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.schemas import (
    READING,
    Count,
    FileModel,
    Finite,
    NonNegative,
    Positive,
    PositiveInt,
    Real,
    Record,
    check_schema,
    describe,
    one_of,
    parse_json,
    read_json,
    readable_ids,
    schema_id,
    validate,
)
from ffnet_deploy.validate.report import CheckRecord

SCHEMA = schema_id("pipeline", 1)
"""Schema of a pipeline run's ``results.json``."""
JOB_SCHEMA = schema_id("pipeline-job", 1)
STATE_SCHEMA = schema_id("pipeline-state", 1)
PLAN_SCHEMA = schema_id("pipeline-plan", 1)

READABLE_SCHEMAS = readable_ids("pipeline")
READABLE_JOB_SCHEMAS = readable_ids("pipeline-job")
READABLE_STATE_SCHEMAS = readable_ids("pipeline-state")

JOB_STATUSES = ("pending", "exported", "passed", "failed", "skipped", "error")
VERDICTS = ("pass", "fail", "not run")

_ID = re.compile(r"[a-z0-9][a-z0-9_.]*-[a-z0-9][a-z0-9_.]*")


def _inside(value: str | None, info: ValidationInfo) -> str | None:
    """A path a record names must stay inside the output folder: relative, without ``..``."""
    if value is not None and info.context and info.context.get(READING):
        p = PurePosixPath(value)
        if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
            raise ValueError("must be a relative path inside the output folder (no '..', not absolute)")
    return value


Inside = Annotated[str, AfterValidator(_inside)]
Format = Annotated[str, one_of(format_names)]
Precision = Annotated[str, one_of(lambda: precision_names(stored=True))]


# -- a job ------------------------------------------------------------------------------------------------------------


class ArtifactEntry(Record):
    """Where a job's artifact is, relative to the output folder."""

    path: Inside
    size_bytes: Count | None = None
    manifest: Inside | None = None


class ExportEntry(Record):
    """What the export of a job recorded."""

    seconds: NonNegative | None = None
    quantization: dict[str, Any] | None = None
    notices: list[str] = []
    sha256: str | None = None
    reused: bool = False


class ParityEntry(Record):
    """The report's view of a job's validation (:func:`ffnet_deploy.pipeline.engine.parity_entry`)."""

    verdict: Literal["pass", "fail", "not run"]
    profile: str | None = None
    runtime: str | None = None
    metrics: dict[str, Real | int | None] = {}
    failures: list[str] = []
    reason: str | None = None
    data: str | None = None
    checks: list[CheckRecord] = []  # every gated check (records of earlier versions have none)


class BenchEntry(Record):
    """The report's view of a job's bench row (:func:`ffnet_deploy.pipeline.engine.bench_entry`)."""

    runtime: str | None = None
    p50_ms: Positive | None = None
    p90_ms: Positive | None = None
    p99_ms: Positive | None = None
    min_ms: Positive | None = None
    trimmed_mean_ms: Positive | None = None
    throughput_ips: NonNegative | None = None
    first_inference_ms: NonNegative | None = None
    peak_rss_mb: Finite | None = None
    iterations: Count | None = None
    torch_p50_ms: Positive | None = None
    speedup_vs_torch: NonNegative | None = None  # the median of the per-block ratios (None: no quiet torch row)
    vs_torch_low: NonNegative | None = None  # lowest and highest per-block ratio
    vs_torch_high: NonNegative | None = None
    blocks_ms: list[NonNegative | None] = []  # best latency per block, paired with the other jobs' of the run
    verdict: Literal["stable", "noisy: rerun on a quiet machine"] | None = None
    noise_reasons: list[str] = []
    torch_omp_wait_policy: str | None = None  # how the baseline's OpenMP pool waited (PASSIVE: no spinning)
    load_before: NonNegative | None = None  # 1-minute load average before and after the bench stage
    load_after: NonNegative | None = None
    host_measurement: str | None = None  # the bench row's: timed on a host, not on the device it is for
    reason: str | None = None


class JobRecord(FileModel):
    """One job's outcome: ``jobs/<id>.json``, and an entry of ``results.json``'s ``jobs``."""

    schema_: str = Field(JOB_SCHEMA, alias="schema")
    id: str
    format: Format
    precision: Precision
    status: Literal["pending", "exported", "passed", "failed", "skipped", "error"]
    reason: str | None = None
    artifact: ArtifactEntry | None = None
    export: ExportEntry | None = None
    parity: ParityEntry | None = None
    bench: BenchEntry | None = None
    ran_on: str | None = None  # the machine that ran it when not the run's own (a Ray node's host)

    @model_validator(mode="after")
    def _id(self, info: ValidationInfo) -> JobRecord:
        if info.context and info.context.get(READING) and (not _ID.fullmatch(self.id)
                                                          or self.id != f"{self.format}-{self.precision}"):
            raise ValueError(f"id {self.id!r} must be <format>-<precision> of the record "
                             f"({self.format}-{self.precision})")
        return self


# -- a run ------------------------------------------------------------------------------------------------------------


class CheckpointInfo(Record):
    """The checkpoint a run deployed (``describe_checkpoint`` plus the resolution and the MACs at it)."""

    path: str
    sha256: str
    variant: str
    fused: bool | None = None
    num_classes: PositiveInt | None = None
    params: Count | None = None
    resolution: PositiveInt | None = None
    gmacs: NonNegative | None = None
    published_top1: NonNegative | None = None
    random_weights: bool = False


class InspectOutputs(CheckpointInfo):
    """The ``inspect`` stage's record in the state: what the later stages read of it must be there."""

    fused: bool
    num_classes: PositiveInt
    params: Count
    resolution: PositiveInt


class DataInfo(Record):
    eval: str | None = None
    labelled: bool = False
    reference_accuracy: Real | None = None


class Recommendation(Record):
    """For one runtime, the fastest artifact that passed parity (``job`` ``None``: none, and ``why``)."""

    runtime: str
    job: str | None = None
    p50_ms: Positive | None = None
    fp32_job: str | None = None
    fp32_p50_ms: Positive | None = None
    speedup_vs_fp32: NonNegative | None = None
    speedup_low: NonNegative | None = None  # the range of the per-block ratios behind speedup_vs_fp32 (p50s)
    speedup_high: NonNegative | None = None
    verdict: Literal["stable", "noisy: rerun on a quiet machine"] | None = None
    why: str = ""


class Summary(Record):
    jobs: Count = 0
    passed: Count = 0
    failed: Count = 0
    skipped: Count = 0
    errors: Count = 0
    exit_code: int = 0
    seconds: NonNegative | None = None
    look_at: list[str] = []


class PipelineResults(FileModel):
    """A run's ``results.json``: everything the report shows, and nothing else is read to render it."""

    schema_: str = Field(SCHEMA, alias="schema")
    command: str = ""
    created: str | None = None
    versions: dict[str, str | None] = {}
    device: Device | None = None
    checkpoint: CheckpointInfo | None = None
    settings: dict[str, Any] = {}
    data: DataInfo | None = None
    jobs: list[JobRecord] = []
    recommendations: list[Recommendation] = []
    plots: dict[str, str] = {}
    summary: Summary | None = None

    @property
    def exit_code(self) -> int:
        return self.summary.exit_code if self.summary is not None else 0


# -- the state --------------------------------------------------------------------------------------------------------


class StageRecord(Record):
    """One finished stage: the hash of its inputs and what it produced."""

    inputs: str
    outputs: dict[str, Any] = {}
    finished: str | None = None
    seal: str | None = None  # HMAC of the record under the user's key (ffnet_deploy.pipeline.state); None: unsealed


class StateFile(FileModel):
    schema_: str = Field(STATE_SCHEMA, alias="schema")
    stages: dict[str, StageRecord] = {}


class _Paths(Record):
    path: str


class _Fused(_Paths):
    sha256: str


# What each stage's ``outputs`` must hold, by key (``export:onnx-int8`` -> ``export``): the stages read them back.
STAGE_OUTPUTS: dict[str, Any] = {"inspect": InspectOutputs, "reparameterize": _Fused, "export": _Paths,
                                 "validate": ParityEntry, "bench": dict[str, BenchEntry | None]}


# -- readers ----------------------------------------------------------------------------------------------------------

_RESULTS_HINT = "pass the output folder of a complete 'ffnet-deploy pipeline' run (rerun it to rewrite the file)"
_JOB_HINT = "rerun that job ('ffnet-deploy pipeline --only FORMAT/PRECISION') to rewrite it"
_STATE_HINT = "rerun with --force to start over"


def read_results(path: str | Path) -> PipelineResults:
    """A run's ``results.json``, validated; it must name its checkpoint.

    Raises:
        ConfigError: One line naming the file and the field.
    """
    results = read_json(path, PipelineResults, what="pipeline results", schemas=READABLE_SCHEMAS,
                        hint=_RESULTS_HINT)
    if results.checkpoint is None:
        raise ConfigError(f"pipeline results | {path}: field 'checkpoint' is missing; {_RESULTS_HINT}")
    return results


def read_job(path: str | Path) -> JobRecord:
    """A job record ``jobs/<id>.json``, validated; its file name is its id.

    Raises:
        ConfigError: One line naming the file and the field.
    """
    record = read_json(path, JobRecord, what="pipeline job", schemas=READABLE_JOB_SCHEMAS, hint=_JOB_HINT)
    if Path(path).name != f"{record.id}.json":
        raise ConfigError(f"pipeline job | {path}: field 'id' is {record.id!r}, but the file is named "
                          f"{Path(path).name}; {_JOB_HINT}")
    return record


def read_state(path: str | Path) -> StateFile:
    """An output folder's ``.pipeline/state.json``, validated, every stage's outputs included.

    Raises:
        ConfigError: One line naming the file and the field.
    """
    from ffnet_deploy.inputs import read_bounded

    path = Path(path)
    raw = read_bounded(path, "pipeline state", 64 << 20, ConfigError)
    data = parse_json(raw, path, "pipeline state", _STATE_HINT)
    check_schema(data, path, "pipeline state", READABLE_STATE_SCHEMAS, _STATE_HINT)
    state = validate(raw, data, StateFile, path, "pipeline state", _STATE_HINT)
    for key in state.stages:
        model = STAGE_OUTPUTS.get(key.split(":", 1)[0])
        if model is None:
            continue
        raw_outputs = data["stages"][key].get("outputs", {})
        try:
            _adapter(model).validate_python(raw_outputs, strict=True, context={READING: True})
        except ValidationError as err:
            where, problem = describe(err, raw_outputs)
            field = f"stages.{key}.outputs" + (f".{where}" if where and not where.startswith("[") else where)
            raise ConfigError(f"pipeline state | {path}: field {field!r} {problem}; {_STATE_HINT}") from None
    return state


_ADAPTERS: dict[Any, TypeAdapter] = {}


def _adapter(model: Any) -> TypeAdapter:
    if model not in _ADAPTERS:
        _ADAPTERS[model] = TypeAdapter(model)
    return _ADAPTERS[model]
