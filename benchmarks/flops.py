"""Model FLOPs per sequence from a BERT shape (matmul FLOPs only, 1 multiply-add = 2 FLOPs).

Per layer and sequence of L tokens, hidden H, intermediate I:
* dense layers: Q, K, V and attention output projections (4 H x H) and the feed-forward pair
  (H x I, I x H): 2 * L * (4 H^2 + 2 H I)
* attention: scores Q K^T and the weighted sum P V, each L x L x H multiply-adds: 2 * 2 * L^2 * H
The QA head (H x 2) is added; embeddings, layer norms, softmax and GELU are not counted (they are
not matmuls), as is usual for model FLOP utilisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BertShape:
    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int

    @classmethod
    def from_hf_config(cls, path: str | Path, name: str | None = None) -> "BertShape":
        path = Path(path)
        config = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        return cls(
            name or f"{config['num_hidden_layers']}L-{config['hidden_size']}H",
            int(config["num_hidden_layers"]),
            int(config["hidden_size"]),
            int(config["num_attention_heads"]),
            int(config["intermediate_size"]),
        )

    @property
    def label(self) -> str:
        return f"{self.layers} layers, hidden {self.hidden}, {self.heads} heads, intermediate {self.intermediate}"

    def dense_params(self) -> int:
        """Weights that take part in matmuls per token (encoder + QA head)."""
        h, i = self.hidden, self.intermediate
        return self.layers * (4 * h * h + 2 * h * i) + 2 * h


def flops_per_sequence(shape: BertShape, seq_len: int) -> float:
    """Matmul FLOPs of one forward pass over a sequence of ``seq_len`` tokens."""
    h, i, n = shape.hidden, shape.intermediate, seq_len
    dense = 2 * n * shape.layers * (4 * h * h + 2 * h * i)
    attention = shape.layers * 2 * 2 * n * n * h
    head = 2 * n * h * 2
    return float(dense + attention + head)


def model_flop_utilisation(shape: BertShape, seq_len: int, sequences_per_s: float, peak_flops: float) -> float:
    return flops_per_sequence(shape, seq_len) * sequences_per_s / peak_flops


# ONNX Runtime op types that are matrix products (attention fused into one op counts: its time is mostly GEMMs).
MATMUL_OPS = frozenset({"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "Attention", "MultiHeadAttention"})


def ort_op_times(model_path, feeds: dict, runs: int = 5) -> dict[str, float]:
    """Seconds per run spent in each ONNX Runtime op type (its profiler, ORT_ENABLE_ALL as served), after a warm-up."""
    import json
    import os
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(open(session.end_profiling()).read())
    per_op: dict[str, float] = {}
    node_runs = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + event["dur"] / 1e6
            node_runs[event["name"]] = node_runs.get(event["name"], 0) + 1
    total_runs = max(node_runs.values()) if node_runs else 1  # the warm-up run is profiled too
    return {op: seconds / total_runs for op, seconds in sorted(per_op.items(), key=lambda kv: -kv[1])}
