"""The study's caches: finished pieces of its evaluation in `<out>/state.json`, trained models in the model cache.

Both are written only by the study's driver process (workers send their pieces to it), atomically, so a study
stopped at any point (killed, a node lost, Ctrl-C) resumes where it stopped, on any executor. The state is valid
for one fingerprint (the study's settings and the library's version); a model file is named by the hash of what
determines the model, so other evaluation settings reuse it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._version import __version__
from ..datasets import Dataset
from ..errors import InputError, describe
from ..runtime import distributed as dist
from ..runtime.files import atomic_write
from ..runtime.signals import check_stop
from .schema import ModelEntry, StudyConfig

__all__ = ["STATE_SCHEMA", "StudyState", "model_path", "study_fingerprint", "unit_keys"]

log = logging.getLogger(__name__)

#: The state file's schema; files without it (or with another) were written by another version of the study.
STATE_SCHEMA = "nonsingular.study-state/2"


class StudyState:
    """Finished pieces of a study by key (each the to_json of a typed record), persisted as JSON after every
    update."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.values: dict[str, Any] = {}
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise InputError(
                    f"{path} is unreadable ({describe(err)}); rerun with --fresh to start afresh"
                ) from None
            if not isinstance(saved, dict):
                raise InputError(f"{path} does not hold a study state; rerun with --fresh to start afresh")
            if saved.get("schema") != STATE_SCHEMA:
                raise InputError(
                    f"{path} was written by another version of the study (schema {saved.get('schema', 'none')}, "
                    f"this one reads {STATE_SCHEMA}); rerun with --fresh to recompute it"
                )
            if saved.get("fingerprint") == fingerprint:
                self.values = saved.get("values", {})
            else:
                log.info("study settings changed since %s was written: starting its evaluation afresh", path)
        self.fingerprint = fingerprint

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value
        if dist.rank() == 0:
            payload = {"schema": STATE_SCHEMA, "fingerprint": self.fingerprint, "values": self.values}
            text = json.dumps(payload, allow_nan=False)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        check_stop()  # SIGINT/SIGTERM stop here, between pieces, with this one kept (runtime/signals.py)


def study_fingerprint(config: StudyConfig) -> str:
    """What the state's pieces depend on: every setting of the study, and the library's version."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True) + __version__


def model_path(config: StudyConfig, entry: ModelEntry, data: Dataset, seed: int, cache_dir: Path) -> Path:
    """The cache file of `entry` trained with `seed` on `data`."""
    key = config.model_key(entry, data.fingerprint, seed)
    return cache_dir / f"{entry.name.replace('/', '_')}-{key}.safetensors"


def unit_keys(name: str, seed: int) -> Callable[[str], bool]:
    """Whether a state key belongs to the unit (model `name`, `seed`): kind[@tag]/name/seed[/...]."""

    def belongs(key: str) -> bool:
        parts = key.split("/")
        return len(parts) >= 3 and parts[1] == name and parts[2] == str(seed)

    return belongs
