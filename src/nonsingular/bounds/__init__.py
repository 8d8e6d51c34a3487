"""Bounds on what the joint threat can do to a network: Theorem 2's error analysis, IBP, CROWN, alpha-CROWN.

Owns tracing a model into a graph of ops (`graph`), one rule per op in one table (`registry`, rules in
`ops_*`), the per-layer form of the threat (`layer_threat`), the engines (`ibp`, `crown`, `alpha`, `engine`)
and the margin driver. May import the vocabulary and `models` (the `Normalize` layer); never attacks (a bound
must not depend on what an attack found) or anything above.

```python
lower = margin_bounds(model, x, y, threat, method="crown").lower   # (N, K) margin lower bounds, any traced model
r_x, r_w, _ = sensitivity_terms(model, x, threat)                  # Theorem 2's regulariser terms
err = forward_error_bound(model, lb, ub, threat)                    # (N, K) float32 execution error per logit
```
"""

from .api import DEFAULT_ALPHA_STEPS, margin_bounds, supported_methods
from .crown import alpha_crown_margin_bounds, crown_margin_bounds
from .ibp import ibp_margin_bounds
from .layer_threat import UnsupportedLayerError
from .margins import BoundMethod, MarginBounds, loss_bound_from_margins
from .norm import NormBounds, SensitivityTerms, norm_bounds, norm_margin_bounds, sensitivity_terms
from .registry import (
    DEFAULT_MEMORY_MB,
    RULES,
    IntervalOnlyRule,
    IntervalRule,
    Rule,
    register_ibp_rule,
    register_rule,
)
from .rounding import Execution, execution_of, forward_error_bound, margin_error_bound

__all__ = [
    "DEFAULT_ALPHA_STEPS",
    "DEFAULT_MEMORY_MB",
    "RULES",
    "BoundMethod",
    "Execution",
    "IntervalOnlyRule",
    "IntervalRule",
    "MarginBounds",
    "NormBounds",
    "Rule",
    "SensitivityTerms",
    "UnsupportedLayerError",
    "alpha_crown_margin_bounds",
    "crown_margin_bounds",
    "execution_of",
    "forward_error_bound",
    "ibp_margin_bounds",
    "loss_bound_from_margins",
    "margin_bounds",
    "margin_error_bound",
    "norm_bounds",
    "norm_margin_bounds",
    "register_ibp_rule",
    "register_rule",
    "sensitivity_terms",
    "supported_methods",
]
