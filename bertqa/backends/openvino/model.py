"""Embedded-mode stand-in for Triton's native openvino backend (logic: bertqa.triton.openvino_backend)."""

import os
import site
import sys

# The Python backend stub runs isolated (PYTHONPATH ignored); the launcher names the venv instead.
# Its packages go first so they win over any system-wide copies.
if os.environ.get("BERTQA_SITE_PACKAGES"):
    _before = list(sys.path)
    site.addsitedir(os.environ["BERTQA_SITE_PACKAGES"])
    sys.path[:] = [p for p in sys.path if p not in _before] + _before

from bertqa.triton.openvino_backend import OpenVinoModel as TritonPythonModel  # noqa: E402,F401
