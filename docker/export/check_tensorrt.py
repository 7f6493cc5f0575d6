"""Fail when the TensorRT Python package differs from the TensorRT libraries of the Triton image.

A serialized engine (model.plan) only deserializes in the TensorRT release that built it, and
Triton's tensorrt backend uses the image's libnvinfer. Building with any other pip `tensorrt`
would produce engines that Triton refuses at load time, so this runs at image build time and
again before every engine build. Compares major.minor.patch: pip versions carry no build number.
"""

from __future__ import annotations

import argparse
import glob
import re
import sys
from importlib import metadata

# Where NGC images keep libnvinfer (Debian packages; tarball installs; the backend's own copy).
LIBRARY_GLOBS = (
    "/usr/lib/x86_64-linux-gnu/libnvinfer.so.*.*.*",
    "/usr/lib/aarch64-linux-gnu/libnvinfer.so.*.*.*",
    "/usr/local/tensorrt/lib/libnvinfer.so.*.*.*",
    "/opt/tritonserver/backends/tensorrt/libnvinfer.so.*.*.*",
)
PIP_DISTRIBUTIONS = ("tensorrt-cu12", "tensorrt_cu12", "tensorrt", "tensorrt-cu12-libs")


def _triple(version: str) -> tuple[int, int, int] | None:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return tuple(int(x) for x in match.groups()) if match else None  # type: ignore[return-value]


def pip_version() -> str | None:
    for name in PIP_DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str]:
    found = {}
    for pattern in LIBRARY_GLOBS:
        for path in glob.glob(pattern):
            match = re.search(r"libnvinfer\.so\.(\d+\.\d+\.\d+)", path)
            if match:
                found[path] = match.group(1)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="also fail when no libnvinfer is found")
    args = parser.parse_args(argv)

    python_version = pip_version()
    if python_version is None:
        print("check_tensorrt: no TensorRT Python package installed", file=sys.stderr)
        return 1
    libraries = library_versions()
    if not libraries:
        print(
            f"check_tensorrt: TensorRT {python_version} (pip); no libnvinfer found in the image to compare",
            file=sys.stderr,
        )
        return 1 if args.strict else 0
    mismatched = {p: v for p, v in libraries.items() if _triple(v) != _triple(python_version)}
    if mismatched:
        listing = ", ".join(f"{p} ({v})" for p, v in mismatched.items())
        print(
            f"check_tensorrt: pip TensorRT {python_version} differs from the image's {listing}; "
            "set the TENSORRT_VERSION build argument to the image's TensorRT version",
            file=sys.stderr,
        )
        return 1
    print(f"check_tensorrt: TensorRT {python_version} matches {', '.join(libraries)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
