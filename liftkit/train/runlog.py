"""The run log of training: an append-only JSON-lines file, JSON-safe values, and progress bars."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional


class NullBar:
    """A progress bar that shows nothing."""

    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


# (total, initial, description) -> a bar with update(n), set_postfix_str(s), close()
ProgressFactory = Callable[[int, int, str], Any]


class JsonlLog:
    """Append-only JSON-lines log (one object per line, flushed per line)."""

    def __init__(self, path: Optional[Path]):
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        rec = {"event": event, "time": round(time.time(), 3), **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(rec), sort_keys=False) + "\n")


def json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x
