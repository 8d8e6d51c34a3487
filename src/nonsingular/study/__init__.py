"""The study: the paper's comparison as one resumable run, and its report.

Owns the study's schema (`schema`), the models it trains (`model_units`), the runner and its cache, the
verdict rule, the scale and quantization analyses and the report. May import every layer below it (vocabulary,
runtime, datasets, models, check, attacks, bounds, evaluation, deployment, training); only the CLI sits above.

```python
cfg = load_study_config(None)                         # the shipped default study (or a path, or "mnist-mlp")
report, results = run_study(cfg, Path("runs/study"), Path("runs/cache"))  # report.html and the rest
```
"""

from .report import HEADLINE_COLUMNS, headline_rows, summarise, write_report
from .runner import GridCell, StudyState, run_study
from .scale import layer_stats, rescaled
from .schema import ModelEntry, StudyConfig, default_config_path, load_study_config, shipped_studies
from .verdicts import Comparison, claim_comparisons

__all__ = [
    "HEADLINE_COLUMNS",
    "Comparison",
    "GridCell",
    "ModelEntry",
    "StudyConfig",
    "StudyState",
    "claim_comparisons",
    "default_config_path",
    "headline_rows",
    "layer_stats",
    "load_study_config",
    "rescaled",
    "run_study",
    "shipped_studies",
    "summarise",
    "write_report",
]
