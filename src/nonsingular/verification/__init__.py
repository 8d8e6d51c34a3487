"""Verification of VNNLIB properties on ONNX models: `nonsingular verify` and the instance campaign runner.

```python
result = verify_property(model, load_vnnlib("prop.vnnlib"), timeout=120, onnx_path="net.onnx")
result.status            # Status.UNSAT (verified), SAT (checked counterexample), TIMEOUT, UNKNOWN
write_result("out.txt", result)                   # the VNN-COMP result file
```

Owns the pipeline (falsify, bound, branch and bound, re-check every counterexample with onnxruntime), the result
file, the isolated worker with a hard deadline and the resumable campaign. May import every layer below it
(properties, models and its ONNX importer, check, attacks, bounds, complete); only the CLI sits above.
"""

from .campaign import read_instances, read_results, run_campaign, summarise
from .driver import DEFAULT_METHODS, verify_property
from .instance import VerifyOptions, run_instance, run_isolated
from .joint import RadiusBracket, max_eps_w
from .result import Counterexample, Status, VerificationResult, format_result, write_result

__all__ = [
    "DEFAULT_METHODS",
    "Counterexample",
    "RadiusBracket",
    "Status",
    "VerificationResult",
    "VerifyOptions",
    "format_result",
    "max_eps_w",
    "read_instances",
    "read_results",
    "run_campaign",
    "run_instance",
    "run_isolated",
    "summarise",
    "verify_property",
    "write_result",
]
