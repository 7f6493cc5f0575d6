"""Where the checkout's own folders are (computed once; an installed package sees its site-packages parent)."""

from __future__ import annotations

from pathlib import Path

#: The source checkout (parent of the ``bertqa`` package): model_repository/, demo_model/, data/.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
