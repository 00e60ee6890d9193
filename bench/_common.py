"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def real_data_dir() -> Path:
    """``../shared/data/real`` beside the checkout, or ``$WINCHESTER_REAL_DATA``."""
    configured = os.environ.get("WINCHESTER_REAL_DATA")
    path = Path(configured) if configured else ROOT.parent / "shared" / "data" / "real"
    if not path.is_dir():
        sys.exit(f"real data not found at {path}; set WINCHESTER_REAL_DATA")
    return path
