"""Data sources by name: "digits", "mnist-sample", "mnist:PATH", "fashion-mnist:PATH", "cifar10:PATH", "npz:FILE".

Nothing here downloads anything. `load_data(source, seed)` dispatches on the scheme before the colon;
`register_data_source` adds a scheme (CONTRIBUTING.md: "Adding a data source").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import Dataset
from .cifar import load_cifar10
from .digits import load_digits
from .idx import load_fashion_mnist, load_mnist
from .mnist_sample import load_mnist_sample
from .npz import load_npz

__all__ = ["DATA_SOURCES", "FILE_SOURCES", "canonical_source", "load_data", "register_data_source"]

#: The schemes that read the user's files: loader(argument, seed); the argument is the PATH after the colon.
FILE_SOURCES: dict[str, Callable[[str, int], Dataset]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "npz": load_npz,
}


def _needs_path(scheme: str, loader: Callable[[str, int], Dataset]) -> Callable[[str, int], Dataset]:
    def load(arg: str, seed: int) -> Dataset:
        if not arg:
            raise ValueError(f"data source '{scheme}' needs a path, e.g. '{scheme}:/data/{scheme}'")
        return loader(arg, seed)

    return load


#: scheme -> loader(argument, seed). "digits" and "mnist-sample" take no argument; "mnist:PATH" passes PATH.
DATA_SOURCES: dict[str, Callable[[str, int], Dataset]] = {
    "digits": lambda _arg, seed: load_digits(seed=seed),
    "mnist-sample": lambda _arg, seed: load_mnist_sample(seed=seed),
    **{scheme: _needs_path(scheme, loader) for scheme, loader in FILE_SOURCES.items()},
}


def register_data_source(scheme: str, loader: Callable[[str, int], Dataset]) -> None:
    """Make `load_data` (and every `--data`, config and study) accept "scheme" or "scheme:ARG".

    Args:
        scheme: the name before the colon; must not contain ":".
        loader: loader(arg, seed) -> Dataset with inputs in [0, 1]; raise ValueError naming the file and the
            problem for anything wrong with what it reads (the CLI prints that as one line).
    """
    if not scheme or ":" in scheme:
        raise ValueError(f"a data source scheme must be a non-empty name without ':', got {scheme!r}")
    DATA_SOURCES[scheme] = loader


def canonical_source(source: str) -> str:
    """`source` with its path made absolute ("npz:rel.npz" -> "npz:/cwd/rel.npz"), so a checkpoint or cache key
    that records it names the same files from any working folder. Sources without a path are returned as given."""
    scheme, sep, arg = source.partition(":")
    if not sep or not arg or scheme not in DATA_SOURCES or scheme in ("digits", "mnist-sample"):
        return source
    return f"{scheme}:{Path(arg).expanduser().resolve()}"


def load_data(source: str = "digits", seed: int = 0) -> Dataset:
    """Load a dataset from a source string such as "digits" or "mnist:/data/mnist".

    Raises:
        ValueError: unknown scheme, or the loader found the files wrong (the message names the file).
    """
    scheme, _, arg = source.partition(":")
    if scheme not in DATA_SOURCES:
        raise ValueError(f"unknown data source {scheme!r}; known: {sorted(DATA_SOURCES)}")
    return DATA_SOURCES[scheme](arg, seed)
