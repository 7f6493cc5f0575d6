"""Decide which models the Triton container loads: one name per line on stdout, skips on stderr.

Triton runs with --model-control-mode=explicit and one --load-model per name printed here, so a
variant whose files were never exported (bert_trt on a CPU host, bert_onnx_int8 when nobody asked
for it) is skipped instead of failing startup, while a model that *should* load and does not still
stops the server (--exit-on-error stays true, /v2/health/ready stays strict).

Which files a model needs comes from bertqa.repository (shared with the embedded launcher); this
script adds what only the container knows: whether a GPU is visible (TensorRT plans need one) and
an operator's explicit choice (TRITON_LOAD_MODELS).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bertqa.repository import plan_loading, read_repository, with_dependencies

# Platforms/backends that cannot run without a GPU.
GPU_ONLY_KINDS = frozenset({"tensorrt_plan", "tensorrt"})


def gpu_available(setting: str | None = None) -> bool:
    """BERTQA_GPU=1/0 forces the answer; otherwise ask nvidia-smi (present only with a GPU runtime)."""
    setting = (setting if setting is not None else os.environ.get("BERTQA_GPU", "auto")).strip().lower()
    if setting in {"1", "true", "yes", "on"}:
        return True
    if setting in {"0", "false", "no", "off"}:
        return False
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def choose(repository: Path, gpu: bool, requested: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(models to load, {skipped model: reason})."""
    entries = read_repository(repository)
    loadable, skipped = plan_loading(repository)
    skipped = dict(skipped)
    if not gpu:
        for name in loadable:
            config = entries[name].config
            if (config.platform or config.backend) in GPU_ONLY_KINDS:
                skipped[name] = "TensorRT engine needs a GPU and none is visible"
        changed = True
        while changed:  # a model that needs a skipped one (ensemble step, BLS target) cannot load either
            changed = False
            for name in loadable:
                if name in skipped:
                    continue
                bad = [step for step in entries[name].dependencies if step in skipped]
                if bad:
                    skipped[name] = "needs " + ", ".join(f"{step} (skipped)" for step in bad)
                    changed = True
    chosen = [name for name in loadable if name not in skipped]
    if requested:
        unavailable = [name for name in requested if name not in chosen]
        if unavailable:
            reasons = "; ".join(f"{n}: {skipped.get(n, 'not in repository')}" for n in unavailable)
            raise SystemExit(f"TRITON_LOAD_MODELS names models that cannot load: {reasons}")
        # Triton loads an ensemble's steps itself in explicit mode, not the BERT model run by BLS.
        chosen = with_dependencies(entries, list(dict.fromkeys(requested)))
    return chosen, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument(
        "--models",
        default=os.environ.get("TRITON_LOAD_MODELS", ""),
        help="comma-separated subset to load (default: $TRITON_LOAD_MODELS, empty = all loadable)",
    )
    args = parser.parse_args(argv)
    requested = [m.strip() for m in args.models.split(",") if m.strip()]
    chosen, skipped = choose(args.repository, gpu_available(), requested)
    for name, reason in skipped.items():
        print(f"[bertqa-triton] skipping {name}: {reason}", file=sys.stderr)
    if not chosen:
        print(
            f"[bertqa-triton] no loadable model in {args.repository}: run the export service "
            "(`docker compose run --rm export`) or `bertqa install-demo`",
            file=sys.stderr,
        )
        return 1
    print("\n".join(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
