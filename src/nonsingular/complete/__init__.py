"""Complete verification: branch and bound over ReLU splits (or input bisection), with beta-CROWN bounds.

```python
result = branch_and_bound(model, lower, upper, C, d, timeout=60.0)   # unsafe: {x in box : C f(x) <= d}
result.status        # unsat / sat / timeout / unknown; result.witness is the checked counterexample when sat
```
See docs/complete.md for the algorithm, the options and what is (and is not) proven under weight threats.
Owns the domain store, branching, beta-CROWN bounding of Linear/ReLU chains, the falsifier and the MILP reference.
May import the vocabulary, `models` and `bounds` (per-layer threats); `verification` sits above it.
"""

from .attack import Witness, check_witness, property_value
from .bab import DEFAULT_BATCH_DOMAINS, DEFAULT_MEMORY_MB, branch_and_bound
from .branching import Branching
from .chain import Chain, chain_from_model
from .milp import MILPResult, leaf_lp, milp_min_value
from .result import BaBOptions, BaBResult, BaBStats, BaBStatus, Progress

__all__ = [
    "DEFAULT_BATCH_DOMAINS",
    "DEFAULT_MEMORY_MB",
    "BaBOptions",
    "BaBResult",
    "BaBStats",
    "BaBStatus",
    "Branching",
    "Chain",
    "MILPResult",
    "Progress",
    "Witness",
    "branch_and_bound",
    "chain_from_model",
    "check_witness",
    "leaf_lp",
    "milp_min_value",
    "property_value",
]
