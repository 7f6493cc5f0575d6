"""qa_postprocess (logic: bertqa.triton.postprocess)."""

import os
import site
import sys

# The Python backend stub runs isolated (PYTHONPATH ignored); the embedded launcher names the venv.
# In the NGC image the package is installed system-wide and the variable is unset.
if os.environ.get("BERTQA_SITE_PACKAGES"):
    _before = list(sys.path)
    site.addsitedir(os.environ["BERTQA_SITE_PACKAGES"])
    sys.path[:] = [p for p in sys.path if p not in _before] + _before

from bertqa.triton.postprocess import PostprocessModel as TritonPythonModel  # noqa: E402,F401
