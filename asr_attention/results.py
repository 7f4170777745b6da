"""results.json: one file per run, rewritten atomically after every phase, so a crash keeps what finished."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Results:
    def __init__(self, path: Path, **initial: Any):
        self.path = Path(path)
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.update(**initial)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)  # atomic: a reader never sees half a file
