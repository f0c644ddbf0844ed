"""Worker: run ONNX / OpenVINO models over saved inputs and save their logits (run natively or under qemu-user).

``python studies/ort_logits.py JOB.json`` where the job is ``{"inputs": "x.npy", "out": "logits.npz",
"models": {"name": {"path": "model.onnx", "runtime": "onnxruntime" | "openvino", "reference_math": false}}}``.
``reference_math`` runs ONNX Runtime with every graph optimization off, so Q/DQ nodes execute as the reference
float arithmetic of the ONNX spec (no fused integer kernels). It imports neither torch nor ffnet_deploy, so that an
emulated CPU starts it in seconds.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def cpu_view() -> list[str]:
    """The ISA features this process sees through CPUID (numpy's dispatcher), e.g. under qemu-user's -cpu model."""
    from numpy._core._multiarray_umath import __cpu_features__

    return sorted(k for k, v in __cpu_features__.items() if v and k.startswith(("AVX", "FMA")))


def run(job: dict) -> None:
    x = np.load(job["inputs"])
    out = {}
    for name, spec in job["models"].items():
        if spec["runtime"] == "openvino":
            import openvino as ov

            # f32: CPUs with AVX512-BF16 or AMX would otherwise run the float parts in bf16.
            model = ov.Core().compile_model(spec["path"], "CPU", {"INFERENCE_NUM_THREADS": 2,
                                                                  "INFERENCE_PRECISION_HINT": "f32"})
            out[name] = np.concatenate([model(x[i:i + 1])[0] for i in range(len(x))])
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 2
            if spec.get("reference_math"):
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            session = ort.InferenceSession(spec["path"], options, providers=["CPUExecutionProvider"])
            feed = session.get_inputs()[0].name
            out[name] = np.concatenate([session.run(None, {feed: x[i:i + 1]})[0] for i in range(len(x))])
    np.savez(job["out"], **out)
    print(json.dumps({"cpu_features": cpu_view()}))


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        run(json.load(f))
