"""The one error type of the importer: every refusal is an `OnnxImportError` with a one-line message."""

from __future__ import annotations

from nonsingular.errors import InputError

__all__ = ["OnnxImportError", "quote", "show"]

#: The longest message an import error carries (a file may hold names of any length).
MAX_MESSAGE = 1000


class OnnxImportError(InputError):
    """An ONNX file the importer refuses: unreadable, hostile, or using an op or attribute it does not support.

    A subclass of `InputError` (hence of `ValueError`), so the CLI prints it as one line and exits with status 2.
    The message names the file or the node (op type, node name, opset) and the problem; it is made one line
    of at most MAX_MESSAGE characters whatever the file's names hold.
    """

    def __init__(self, message: str) -> None:
        text = " ".join(str(message).split())
        super().__init__(text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "...")


def quote(name: str, limit: int = 60) -> str:
    """A name from the file as messages quote it: cut to `limit` characters, quoted, escaped."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


def show(name: str, limit: int = 60) -> str:
    """An op type or attribute name as messages give it: as is when it is an identifier, else `quote`d."""
    return name if name.isidentifier() and len(name) <= limit else quote(name, limit)
