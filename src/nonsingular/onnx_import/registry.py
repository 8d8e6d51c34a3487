"""The one table of converters, keyed by ONNX op type and the opset range each converter is written for.

A converter is a function of a `NodeContext` (context.py) that emits PyTorch modules for one node (or folds it
into a constant). Adding an op: write the function in the converter module of its family and decorate it with
`@converter("OpType", since=..., until=...)`; the range is the default-domain opsets whose definition of the op
the function implements (an op whose definition changed gets one entry per definition).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import OnnxImportError, show

if TYPE_CHECKING:
    from .context import NodeContext

__all__ = ["CONVERTERS", "Converter", "converter", "find_converter"]

Converter = Callable[["NodeContext"], None]


@dataclass(frozen=True)
class _Entry:
    since: int
    until: int
    fn: Converter


#: op type -> the converters for its opset ranges (filled by the converters package on import).
CONVERTERS: dict[str, list[_Entry]] = {}


def converter(op_type: str, since: int, until: int) -> Callable[[Converter], Converter]:
    """Register the decorated function as the converter of `op_type` for opsets since..until (inclusive)."""

    def register(fn: Converter) -> Converter:
        entries = CONVERTERS.setdefault(op_type, [])
        if any(e.since <= until and since <= e.until for e in entries):
            raise RuntimeError(f"two converters for {op_type} overlap in opsets {since}..{until}")
        entries.append(_Entry(since, until, fn))
        return fn

    return register


def find_converter(op_type: str, opset: int, label: str) -> Converter:
    """The converter for `op_type` at `opset`, or an OnnxImportError naming the node (`label`)."""
    for entry in CONVERTERS.get(op_type, []):
        if entry.since <= opset <= entry.until:
            return entry.fn
    supported = ", ".join(sorted(CONVERTERS))
    raise OnnxImportError(f"{label}: op {show(op_type)} is not supported (supported: {supported})")
