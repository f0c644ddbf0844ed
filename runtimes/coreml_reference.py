"""``coreml-reference``: run a Core ML program anywhere, with a numpy interpreter of its MIL ops.

Core ML prediction needs macOS, so on Linux CI a ``.mlpackage`` could only be converted, never checked. This runner
reads the package with coremltools' own readers (spec protobuf and weight blob) and executes the program's main
function op by op in numpy (see :mod:`ffnet_deploy.runtimes._mil_program`).

What it proves, and what it does not: it checks that the *conversion* is right (the ops, their attributes, the
weights in the blob, the compression ops that decode them, the fp16 casts and the image preprocessing baked into
the program). Compressed programs run as well: int8/int4 linear weights (``constexpr_affine_dequantize``,
``constexpr_blockwise_shift_scale`` with packed sub-byte blobs), palettized weights (``constexpr_lut_to_dense`` in
its iOS16 and iOS18 forms) and W8A8 activations (``quantize`` / ``dequantize``); their decoded weights are checked
bit for bit against coremltools' own ``decompress_weights``. It does not run Apple's kernels, so it says nothing
about Core ML's own numerics, the Neural Engine, or speed; for those use the ``coreml`` runner on a Mac. Its latency
is numpy's, not Core ML's.

Image inputs: for ML programs coremltools turns ``ImageType(scale, bias)`` into ``mul``/``add`` ops at the start of
the program, and the program's input is a float (1, C, H, W) pixel tensor. The runner therefore takes pixel arrays
(N, C, H, W) in 0-255 and the program itself applies the scale and bias.

``threads`` limits numpy's BLAS thread pool (where the convolutions and matmuls run) for the duration of each
inference, through ``threadpoolctl`` when it is installed; without it the limit cannot be applied and the runner
records that in ``notices``. There is no options object, so ``session_options`` is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.artifact.coreml_spec import input_specs, load_spec, output_names
from ffnet_deploy.artifact.manifest import Manifest, TensorSpec
from ffnet_deploy.runtimes._mil_ops import NotStackable
from ffnet_deploy.runtimes._mil_program import MILProgram, Observer
from ffnet_deploy.runtimes.base import BaseRunner, SessionOptionsHook, register_runtime


@register_runtime("coreml-reference")
class CoreMLReferenceRunner(BaseRunner):
    """Executes a Core ML ML program with the numpy reference interpreter.

    Args:
        artifact: ``model.mlpackage`` or an artifact directory.
        compute_fp32: Run every fp16 value and op in float32 (the program's own fp32 twin).
        observer: Called as ``observer(name, op_type, value)`` for every non-const op output of each run, for
            per-op error localization.
        threads: numpy BLAS threads of one inference (via ``threadpoolctl``); ``None`` keeps numpy's default.
        session_options: Not supported; passing one is a ConfigError.
        manifest: The artifact's manifest, if already read.
        name: Display name.
    """

    requires = (("coremltools.libmilstoragepython", "coreml"),)
    model_suffixes = (".mlpackage",)
    formats = ("coreml",)
    localize = "mil-ops"
    any_batch = True  # a batch-1 program runs larger batches stacked or item by item (see _infer)

    def __init__(self, artifact: str | Path | None, *, compute_fp32: bool = False, observer: Observer | None = None,
                 threads: int | None = None, session_options: SessionOptionsHook | None = None,
                 manifest: Manifest | None = None, name: str | None = None) -> None:
        super().__init__(artifact, threads=threads, session_options=session_options, manifest=manifest, name=name)
        self._threadpools: Any = None  # threadpoolctl.ThreadpoolController, when threads is set and it is installed
        if threads is not None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:
                self.notices.append(f"threads={threads} is not honoured: threadpoolctl is not installed "
                                    "(pip install threadpoolctl), so numpy's BLAS keeps its own thread count")
            else:
                self._threadpools = ThreadpoolController()
        self.compute_fp32 = compute_fp32
        self.observer = observer
        self.model_path: Path | None = None
        self.program: MILProgram | None = None
        self._spec: Any = None
        self._stackable: bool | None = None  # whether batches can run stacked; None until the first one is tried

    def _activate(self) -> None:
        self.model_path = self._model_file()
        self._spec = load_spec(self.model_path, self.name)
        self.program = MILProgram.load(self.model_path, self._spec)
        self._stackable = None

    def _input_metadata(self) -> list[TensorSpec]:
        specs = input_specs(self._spec, self.name)
        if self.compute_fp32:
            specs = [replace(s, dtype="float32") if s.np_dtype == np.float16 else s for s in specs]
        return specs

    def _output_names(self) -> list[str]:
        return output_names(self._spec)

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        assert self.program is not None
        program = self.program
        batch = next(iter(feed.values())).shape[0]
        # Converted programs usually fix the batch at 1 (and bake it into reshapes). A larger batch runs stacked in
        # one pass when no op mixes the samples (MILProgram.run(stacked=...)), else item by item; an observer sees
        # the ops of one sample at a time, as it would on the program's own batch.
        fixed_one = all(shape[:1] == (1,) for _dtype, shape in program.inputs.values())
        limit = nullcontext()
        if self._threadpools is not None:
            limit = self._threadpools.limit(limits=self.threads, user_api="blas")
        with limit:
            runs = None
            if not fixed_one or batch == 1:
                runs = [program.run(feed, observer=self.observer, compute_fp32=self.compute_fp32)]
            elif self.observer is None and self._stackable is not False:
                try:
                    runs = [program.run(feed, compute_fp32=self.compute_fp32, stacked=batch)]
                    self._stackable = True
                except NotStackable:
                    self._stackable = False
            if runs is None:
                runs = [program.run({k: v[i : i + 1] for k, v in feed.items()}, observer=self.observer,
                                    compute_fp32=self.compute_fp32) for i in range(batch)]
        out: dict[str, np.ndarray] = {}
        for name in self._output_names():
            values = [np.asarray(r[name]) for r in runs]
            out[name] = values[0] if len(values) == 1 else np.concatenate([np.atleast_1d(v) for v in values])
        return out

    def _deactivate(self) -> None:
        self.program = None
