"""Errors that blame what the user supplied, and the checks that keep non-finite numbers out of reports.

The CLI turns every `ValueError` (these classes included) and `OSError` into one line on stderr and exit status
2; anything else is a bug and shows a traceback under `--debug`. So the library's rule is simple: where it runs
or reads something the user supplied (a model factory, the user's model, a file, a config), it wraps the call in
`blame(...)`, and any exception that escapes names the thing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import ValidationError

__all__ = ["InputError", "NonFiniteError", "ResourceError", "blame", "describe", "require_finite"]


class InputError(ValueError):
    """Something the user supplied is wrong; the message names it."""


class ResourceError(OSError):
    """The machine ran out of something (disk space, memory) or its storage failed; the message says what was
    kept. An OSError, so the CLI prints it as one line (exit status 2)."""


class NonFiniteError(ValueError):
    """A number that would reach a report (a weight, a logit, a bound, an accuracy) is NaN or infinite."""


def describe(err: BaseException) -> str:
    """One line for an error: pydantic's first problem with its field (no URL, no 'Value error,' prefix)."""
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"{field}: {msg}" if field and field not in msg else msg
    text = " ".join(str(err).split())
    if isinstance(err, KeyError | SyntaxError) or not text:
        return f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text


@contextmanager
def blame(thing: str) -> Iterator[None]:
    """Run user-supplied code or read user-supplied data; any exception becomes an InputError naming `thing`.

    Errors that already explain themselves in user terms (InputError, NonFiniteError) pass unchanged.
    """
    try:
        yield
    except (InputError, NonFiniteError):
        raise
    except Exception as err:  # the user's code may raise anything; say whose it was
        raise InputError(f"{thing}: {describe(err)}") from err


def require_finite(value: float, what: str) -> float:
    """`value` as a float, or NonFiniteError naming `what` (called where a reported number is made)."""
    value = float(value)
    if not math.isfinite(value):
        raise NonFiniteError(f"{what} is {value}: refusing to report a non-finite number")
    return value
