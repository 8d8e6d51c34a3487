"""Verification properties: the typed `Property` (input boxes, unsafe output region) and the VNNLIB parser.

```python
prop = load_vnnlib("prop_0_0.03.vnnlib")       # Property: cases of (box, unsafe conjunctions C y <= d)
```

A low layer: it imports only the vocabulary (`errors`), so that bounds, search and the verify front end can all
read a property; the parser never evaluates anything from the file.
"""

from .property import Case, Conjunction, Property, PropertyError
from .vnnlib import load_vnnlib, parse_vnnlib

__all__ = ["Case", "Conjunction", "Property", "PropertyError", "load_vnnlib", "parse_vnnlib"]
