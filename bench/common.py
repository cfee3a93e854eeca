"""What every benchmark records beside its figures: the machine, and the JSON file of the results."""

from __future__ import annotations

import json
import platform
from pathlib import Path


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}


def write_result(path: Path | None, result: dict) -> None:
    """``result`` with the machine added, as JSON at ``path`` (nothing when no path was asked for)."""
    if path:
        path.write_text(json.dumps({**result, "machine": machine()}, indent=1) + "\n")
