"""The one error type of the importer: every refusal is an `OnnxImportError` with a one-line message."""

from __future__ import annotations

from ..errors import InputError

__all__ = ["OnnxImportError"]


class OnnxImportError(InputError):
    """An ONNX file the importer refuses: unreadable, hostile, or using an op or attribute it does not support.

    A subclass of `InputError` (hence of `ValueError`), so the CLI prints it as one line and exits with status 2.
    The message names the file or the node (op type, node name, opset) and the problem.
    """
