"""The study: the paper's comparison as one resumable run, and its report.

```python
cfg = load_study_config(None)                         # the shipped default study (or a .toml / .yaml path)
report, results = run_study(cfg, Path("runs/study"), Path("runs/cache"))  # report.html and the rest
```
"""

from .config import ModelEntry, StudyConfig, default_config_path, load_study_config
from .report import HEADLINE_COLUMNS, headline_rows, summarise, write_report
from .runner import StudyState, run_study

__all__ = [
    "HEADLINE_COLUMNS",
    "ModelEntry",
    "StudyConfig",
    "StudyState",
    "default_config_path",
    "headline_rows",
    "load_study_config",
    "run_study",
    "summarise",
    "write_report",
]
