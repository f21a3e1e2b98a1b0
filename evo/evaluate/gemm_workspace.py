"""cuBLAS GEMMs without a workspace for a search process (issue 19): `evo search --cublas-workspace none`.

With its default workspace, cuBLAS on an H200 runs the evaluation's GEMMs (32,768 tokens × 576…1,536)
as kernels that need a zeroed workspace: a memset before nearly every GEMM, 184 copy nodes in the
stage graph of one SmolLM2-135M evaluation and 0.79 ms of gaps between its nodes. Without a workspace
it picks kernels that need none: 33 copy nodes, 0.31 ms of gaps, GEMMs 13.25 ms against 13.49, the
64 × 512 forward + KL 24.66 ms against 25.02 and 25.04 (two baselines around it, one lease, same KL:
benchmarks/attention_paths.py --cublas-workspace, session 29). Such large GEMMs gain nothing from
split-K; small ones can. In the search loop (session 30, one lease, one run each) the full evaluation
was 24.30 ms without a workspace against 24.54 with torch's, but the loop ran 55.8 evaluations/s against
61.1, the gap in its 4 × 512 screens (83 against 101 a second at the same median forward, 4.3 and
4.2 ms; session 29's loop with torch's: 113). So it is an option, not the default: `evo search` and the
search benchmarks leave torch's workspace unless asked (--cublas-workspace none).

torch reads both variables once, when it first hands out a cuBLAS workspace, so they are set before any
CUDA matmul of the process. cuBLASLt keeps a workspace of its own: torch's default shares cuBLAS's
("unified"), and a shared workspace of 0 bytes stops every cuBLASLt matmul (a bias epilogue, a
float32 bmm under preferred_blas_library("cublaslt")) with "OOM trying to allocate workspace for
cublaslt" (seen on the H200).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SETTINGS = {"CUBLAS_WORKSPACE_CONFIG": ":0:0", "TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0"}


def gemms_without_workspace(environ: MutableMapping[str, str] = os.environ) -> str:
    """Set SETTINGS in `environ` where the user set neither variable (one they set keeps both theirs:
    half of the pair is what breaks cuBLASLt); one line saying what holds."""
    chosen = [key for key in SETTINGS if key in environ]
    if chosen:
        return "cuBLAS workspace as set: " + ", ".join(f"{key}={environ[key]}" for key in chosen)
    environ.update(SETTINGS)
    return "cuBLAS GEMMs without a workspace (" + ", ".join(f"{k}={v}" for k, v in SETTINGS.items()) + ")"
