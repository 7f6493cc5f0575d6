"""Reading a Triton model repository: which models have their files and can be loaded.

Used by the embedded launcher and by the Docker entrypoint, so a variant whose files were never
exported (e.g. a TensorRT engine on a CPU-only host) is skipped instead of failing the server.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

# The file each platform/backend loads when the config names no default_model_filename.
_DEFAULT_FILES = {
    "onnxruntime_onnx": "model.onnx",
    "onnxruntime": "model.onnx",
    "tensorrt_plan": "model.plan",
    "tensorrt": "model.plan",
    "python": "model.py",
    "openvino": "model.xml",
}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config: model_config_pb2.ModelConfig
    directory: Path

    @property
    def is_ensemble(self) -> bool:
        return self.config.platform == "ensemble"

    @property
    def steps(self) -> list[str]:
        return [step.model_name for step in self.config.ensemble_scheduling.step]

    @property
    def dependencies(self) -> list[str]:
        """Models this one needs: an ensemble's steps, a pre-processing model's ``bert_model`` (run by BLS)."""
        bls = self.config.parameters["bert_model"].string_value if "bert_model" in self.config.parameters else ""
        return self.steps + ([bls] if bls else [])

    def latest_version_dir(self) -> Path | None:
        versions = [p for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit()]
        return max(versions, key=lambda p: int(p.name)) if versions else None

    def missing_files(self) -> list[Path]:
        """Files this model needs that are absent (ensembles: none of their own)."""
        if self.is_ensemble:
            return []
        version = self.latest_version_dir()
        if version is None:
            return [self.directory / "1"]
        kind = self.config.platform or self.config.backend
        filename = self.config.default_model_filename or _DEFAULT_FILES.get(kind)
        needed = [version / filename] if filename else []
        # Tokenizer-style file parameters (e.g. qa_preprocess's tokenizer_file) live in the version dir.
        for key, value in self.config.parameters.items():
            if key.endswith("_file") and value.string_value:
                needed.append(version / value.string_value)
        return [path for path in needed if not path.exists()]


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except text_format.ParseError as err:
        raise ValueError(f"{path}: {err}") from None
    return config


def read_repository(repository: Path) -> dict[str, ModelEntry]:
    repository = Path(repository)
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository not found: {repository}")
    entries = {}
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        config = read_config(config_path)
        name = config.name or config_path.parent.name
        entries[name] = ModelEntry(name, config, config_path.parent)
    return entries


def plan_loading(repository: Path) -> tuple[list[str], dict[str, str]]:
    """(models that can load, {skipped model: reason}) for a repository."""
    entries = read_repository(repository)
    skipped: dict[str, str] = {}
    for entry in entries.values():
        missing = entry.missing_files()
        if missing:
            skipped[entry.name] = "missing " + ", ".join(str(p.relative_to(repository)) for p in missing)
    changed = True
    while changed:  # a model is loadable only if every model it needs is
        changed = False
        for entry in entries.values():
            if entry.name in skipped:
                continue
            bad = [s for s in entry.dependencies if s not in entries or s in skipped]
            if bad:
                skipped[entry.name] = "needs " + ", ".join(
                    f"{s} ({'not in repository' if s not in entries else 'skipped'})" for s in bad
                )
                changed = True
    loadable = [name for name in entries if name not in skipped]
    return loadable, skipped


def with_dependencies(entries: dict[str, ModelEntry], names: list[str]) -> list[str]:
    """``names`` and, transitively, every model they need. Triton loads an ensemble's steps itself
    in explicit mode, but not the models a Python model calls by BLS (the pre-processing's BERT)."""
    out: dict[str, None] = {}
    pending = list(names)
    while pending:
        name = pending.pop(0)
        if name not in out:
            out[name] = None
            pending += entries[name].dependencies if name in entries else []
    return list(out)


def preprocess_of(repository: Path, bert_model: str) -> str:
    """The pre-processing model that runs ``bert_model`` by BLS (qa_preprocess first, if several do)."""
    names = sorted(name for name, entry in read_repository(repository).items()
                   if "bert_model" in entry.config.parameters
                   and entry.config.parameters["bert_model"].string_value == bert_model)
    if not names:
        raise FileNotFoundError(f"no pre-processing model in {repository} runs {bert_model}")
    return "qa_preprocess" if "qa_preprocess" in names else names[0]


class PipelineConfigError(ValueError):
    """The repository's configs cannot serve a model as configured (raised when it loads)."""


def check_window_capacity(repository: Path, preprocess_name: str, bert_model: str, max_windows: int) -> int:
    """BERT's max_batch_size (the BLS chunk size), after checking that ``max_windows`` fits every model
    that receives all windows of one request as one batch (the step after ``preprocess_name`` in
    each ensemble). The error names both numbers."""
    models = read_repository(repository)
    if bert_model not in models:
        raise PipelineConfigError(f"{preprocess_name}: bert_model {bert_model!r} is not in the model repository")
    chunk = models[bert_model].config.max_batch_size
    if chunk < 1:
        raise PipelineConfigError(f"{preprocess_name}: {bert_model} has max_batch_size {chunk}; "
                                  f"it must batch windows (max_batch_size >= 1)")
    for entry in models.values():
        for step, following in zip(entry.steps, entry.steps[1:]):
            receiver = models.get(following)
            if step == preprocess_name and receiver is not None and receiver.config.max_batch_size < max_windows:
                raise PipelineConfigError(
                    f"max_windows {max_windows} exceeds {following}'s max_batch_size "
                    f"{receiver.config.max_batch_size} (ensemble {entry.name} sends all windows of a request to "
                    f"{following} as one batch): lower {preprocess_name}'s max_windows or raise {following}'s "
                    f"max_batch_size"
                )
    return chunk


def main() -> None:
    parser = argparse.ArgumentParser(description="List the models of a Triton repository that can load.")
    parser.add_argument("repository", type=Path)
    parser.add_argument("--skipped", action="store_true", help="print skipped models and why instead")
    args = parser.parse_args()
    loadable, skipped = plan_loading(args.repository)
    if args.skipped:
        for name, reason in skipped.items():
            print(f"{name}: {reason}")
    else:
        print("\n".join(loadable))


if __name__ == "__main__":
    main()
