"""Installs the bundled demo checkpoint (committed under demo_model/) into a model repository.

No PyTorch needed: the ONNX export and tokenizer are committed next to the Hugging Face weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bertqa.files import atomic_copy
from bertqa.server import DEFAULT_REPOSITORY, PROJECT_ROOT

# BERTQA_DEMO_DIR: where an installed (non-editable) package finds the demo, e.g. in a container.
DEMO_DIR = Path(os.environ.get("BERTQA_DEMO_DIR") or PROJECT_ROOT / "demo_model")


@dataclass(frozen=True)
class DemoFile:
    source: str  # relative to the demo folder
    target: str  # relative to the repository


DEMO_FILES = (
    DemoFile("onnx/model.onnx", "bert_onnx/1/model.onnx"),
    DemoFile("tokenizer.json", "qa_preprocess/1/tokenizer.json"),
)


def install_demo(
    repository: Path = DEFAULT_REPOSITORY, demo_dir: Path = DEMO_DIR, force: bool = False
) -> list[Path]:
    """Copies the demo model into ``repository``; returns the files written (none if all present)."""
    missing = [demo_dir / f.source for f in DEMO_FILES if not (demo_dir / f.source).is_file()]
    if missing:
        raise FileNotFoundError(f"demo model files missing: {', '.join(map(str, missing))}")
    targets = [(demo_dir / f.source, Path(repository) / f.target) for f in DEMO_FILES]
    if not force and all(t.exists() for _, t in targets):
        return []
    # Both files or neither: a tokenizer from one checkpoint with the weights of another is wrong.
    for source, target in targets:
        atomic_copy(source, target)
    return [t for _, t in targets]
