"""Where ONNX Runtime spends a forward pass: its own profiler, time summed per operator type."""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def op_time_shares(onnx_path: str | Path, feeds: dict[str, np.ndarray], runs: int = 2, threads: int = 0) -> dict:
    """{op_type: share of node time} over ``runs`` runs after a warm-up, plus the MatMul-like share."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bertqa-ortprof-") as scratch:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(scratch, "profile")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    skipped_warmup = False
    runs_seen = 0
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            runs_seen += 1
    # Node events carry args.op_name; the first run (warm-up) is dropped by keeping the last ``runs`` runs' nodes.
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run = len(nodes) // max(runs_seen, 1)
    for event in nodes[per_run if runs_seen > runs else 0:]:
        per_op[event.get("args", {}).get("op_name", "?")] += float(event.get("dur", 0))
    del skipped_warmup
    total = sum(per_op.values()) or 1.0
    shares = {op: t / total for op, t in sorted(per_op.items(), key=lambda kv: -kv[1])}
    gemm_ops = ("MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                "QLinearMatMul", "Attention", "QAttention")
    return {"shares": shares, "matmul_share": sum(v for k, v in shares.items() if k in gemm_ops),
            "node_ms_per_run": total / 1e3 / runs}
