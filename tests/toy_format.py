"""A toy artifact format, its runner and a toy precision, declared only here, for the guard test
(``tests/test_toy_format.py``): adding a format must touch nothing outside its own room.

- Format ``toy``: the plain ONNX graph written as ``model.toyonnx``, with the precision in its metadata. It makes
  ``fp32`` and the toy precision ``fp24`` (float32 weights rounded to 16 mantissa bits).
- Runner ``toyrt``: ONNX Runtime reading the ``.toyonnx`` bytes.
- Precision ``fp24``: stored in artifacts, with its own tolerance profile.

Nothing registers at import: :func:`registered` adds all three for the length of a ``with`` block, so the tests that
pin the exact set of built-in names never see them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ffnet_deploy.artifact.formats import FormatSpec, PrecisionEvidence, RuntimeChoice
from ffnet_deploy.artifact.manifest import TensorSpec
from ffnet_deploy.artifact.precisions import PRECISIONS, Precision, ToleranceProfile
from ffnet_deploy.errors import ConfigError, RuntimeBackendError
from ffnet_deploy.exporters.base import (
    ExportConfig,
    ExportedArtifact,
    Exporter,
    FormatOptions,
    Log,
    exporter_registered,
    io_specs,
    unwrap,
)
from ffnet_deploy.runtimes import RUNTIMES, BaseRunner

FORMAT_NAME = "toy"
RUNTIME_NAME = "toyrt"
PRECISION_NAME = "fp24"
SUFFIX = ".toyonnx"
MODEL_FILE = f"model{SUFFIX}"
RUNS_ON = "any machine (the toy runner: ONNX Runtime reading .toyonnx)"
METADATA_KEY = "toy_precision"

FP24 = Precision(
    PRECISION_NAME, order=15,
    tolerance=ToleranceProfile(PRECISION_NAME, atol_scale=1e-2, min_cosine=0.99999, localize_sqnr_db=40.0),
    roofline_dtype="fp32", engine_name=None, summary="float32 with 16 mantissa bits (toy)")


def round_to_fp24(array: np.ndarray) -> np.ndarray:
    """float32 values rounded to 16 mantissa bits (round half up on the dropped 7 bits)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x40)) & np.uint32(0xFFFFFF80)).view(np.float32)


@dataclass(frozen=True)
class ToyOptions(FormatOptions):
    """The toy format takes no options of its own."""

    format_name: ClassVar[str] = FORMAT_NAME


class ToyExporter(Exporter):
    """``model.toyonnx``: the plain ONNX export of the model, weights rounded for fp24, precision in its metadata."""

    options_class = ToyOptions

    def validate(self, config: ExportConfig) -> None:
        super().validate(config)
        if config.include_preprocessing or config.dynamic_batch is not None:
            raise ConfigError("toy export | takes no --include-preprocessing or --dynamic-batch")

    def export(self, model, config: ExportConfig, workdir: Path, log: Log, *,
               source_sha256: str | None = None) -> ExportedArtifact:
        import onnx
        from onnx import numpy_helper

        from ffnet_deploy.exporters.onnx import plain_onnx_export

        precision = self.resolve_precision(config)
        graph = workdir / "graph.onnx"
        log("tracing to ONNX for the toy format")
        plain_onnx_export(model, config.resolution, config.batch, graph)
        proto = onnx.load(str(graph))
        graph.unlink()
        if precision == PRECISION_NAME:
            for i, tensor in enumerate(proto.graph.initializer):
                if tensor.data_type == onnx.TensorProto.FLOAT:
                    rounded = round_to_fp24(numpy_helper.to_array(tensor))
                    proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(rounded, tensor.name))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, precision
        (workdir / MODEL_FILE).write_bytes(proto.SerializeToString())
        inputs, outputs = io_specs(config, unwrap(model).num_classes)
        return ExportedArtifact(path=MODEL_FILE, inputs=inputs, outputs=outputs,
                                backend_versions={"onnx": onnx.__version__},
                                details={"toy": "the ONNX graph under another suffix"})


def read_toy_precision(path: Path) -> PrecisionEvidence:
    """The precision the toy file records in its metadata."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # not a toy file: the runner says so
        return PrecisionEvidence(None, f"cannot be read as a toy file ({type(err).__name__})", path)
    recorded = {p.key: p.value for p in proto.metadata_props}.get(METADATA_KEY)
    if recorded is None:
        return PrecisionEvidence(None, "no toy precision in its metadata", path)
    return PrecisionEvidence(recorded, f"its metadata says {recorded}", path)


def is_toy_file(path: Path) -> bool:
    """A toy file is ONNX bytes: the format recognizes them as its own, so validate does not refuse them as ONNX."""
    from ffnet_deploy.exporters.onnx import is_onnx_model

    return is_onnx_model(path)


FORMAT = FormatSpec(
    name=FORMAT_NAME, title="Toy", order=90, suffixes=(SUFFIX,),
    precisions=("fp32", PRECISION_NAME), default_precision="fp32",
    runtimes=(RuntimeChoice(RUNTIME_NAME),), bench_runtime=RUNTIME_NAME, runs_on=RUNS_ON,
    read_precision=read_toy_precision,
    recognizes=lambda path: is_toy_file(path),
)


class ToyRunner(BaseRunner):
    """ONNX Runtime on the bytes of a ``.toyonnx`` file (or an artifact directory holding one)."""

    model_suffixes = (SUFFIX,)
    formats = (FORMAT_NAME,)

    def __init__(self, artifact: str | Path | None, **kwargs) -> None:
        super().__init__(artifact, **kwargs)
        self._session = None

    def _activate(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        try:
            self._session = ort.InferenceSession(self._model_file().read_bytes(), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as err:  # ONNX Runtime raises its own types for a bad file
            raise RuntimeBackendError(f"{self.name} | cannot load {self.artifact}: {err}") from err

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        names = self._output_names()
        return dict(zip(names, self._session.run(names, feed), strict=True))

    def _input_metadata(self) -> list[TensorSpec]:
        types = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}
        return [TensorSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape),
                           types.get(i.type, "float32"), "tensor") for i in self._session.get_inputs()]

    def _output_names(self) -> list[str]:
        return [o.name for o in self._session.get_outputs()]


@contextmanager
def registered() -> Iterator[None]:
    """The toy format, its runner and its precision, registered inside the block only."""
    with PRECISIONS.temporarily(PRECISION_NAME, FP24), RUNTIMES.temporarily(RUNTIME_NAME, ToyRunner), \
            exporter_registered(FORMAT, ToyExporter):
        yield
