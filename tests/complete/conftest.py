"""Makes the cases module next to these tests importable (pytest's rootdir conftest covers tests/ only)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
