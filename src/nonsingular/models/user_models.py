"""The user's own model: built from `package.module:factory` (or `file.py:factory`) plus a safetensors state dict.

Importing the module and calling the factory run the user's code, as any Python import does; whatever that code
raises becomes one InputError naming the spec (`errors.blame`), so a broken factory is a one-line message, not a
traceback through nonsingular.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError, blame
from .checkpoint import check_finite_tensors

__all__ = ["load_user_model", "load_weights"]


def _import_module(target: str, spec: str) -> Any:
    """A module by dotted name, or from a file when `target` ends in .py (no sys.path set-up needed)."""
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise InputError(f"--model {spec}: file {path} not found")
        name = f"_nonsingular_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise InputError(f"--model {spec}: cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        try:
            with blame(f"--model {spec}: importing {path} failed"):
                module_spec.loader.exec_module(module)
        except InputError:
            sys.modules.pop(name, None)
            raise
        return module
    try:
        with blame(f"--model {spec}: importing '{target}' failed"):
            return importlib.import_module(target)
    except InputError as err:
        if isinstance(err.__cause__, ModuleNotFoundError) and err.__cause__.name == target.split(".")[0]:
            raise InputError(
                f"--model {spec}: cannot import module '{target}' ({err.__cause__}); install it, add its folder to "
                "PYTHONPATH, or give the file: path/to/file.py:factory"
            ) from None
        raise


def load_user_model(spec: str, weights: str | Path | None = None, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build the user's model from "package.module:factory" (or "path/to/file.py:factory").

    The factory (a function, a class, or a dotted attribute such as "Net.pretrained") is called with `kwargs`
    and must return an nn.Module.

    Args:
        spec: "module:factory".
        weights: optional .safetensors file with the model's full state dict; keys are checked strictly.
        kwargs: keyword arguments for the factory.

    Returns:
        The model in eval mode.

    Raises:
        InputError: malformed spec, module or factory not found, the import or the factory raised anything,
            the factory returned something else than an nn.Module, or weights that do not fit (`load_weights`).
    """
    target, sep, attr = spec.partition(":")
    if not sep or not target or not attr:
        raise InputError(f"--model expects package.module:factory, got {spec!r}")
    obj: Any = _import_module(target, spec)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"--model {spec}: '{target}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"--model {spec}: '{attr}' is not callable")
    with blame(f"--model {spec}: calling {attr}() failed"):
        model = obj(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise InputError(f"--model {spec}: {attr}() returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def _first(keys: Sequence[str], k: int = 3) -> str:
    shown = ", ".join(keys[:k])
    return shown + (f" (+{len(keys) - k} more)" if len(keys) > k else "")


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a .safetensors state dict into `model` with a strict key, shape and finiteness check.

    Raises:
        InputError: missing or unreadable file; missing, unexpected or wrongly shaped tensors (one line listing
            the first few of each); NaN or infinite values.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable safetensors file ({err})") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_first(unexpected)}")
    if unexpected and all(k.startswith("module.") for k in tensors):
        problems.append("the keys carry DataParallel's 'module.' prefix; save model.module.state_dict()")
    shapes = [
        f"{k} {list(tensors[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"wrong shape {len(shapes)}: {_first(shapes)}")
    if problems:
        raise InputError(f"{path}: weights do not fit the model: " + "; ".join(problems))
    check_finite_tensors(tensors, path)
    model.load_state_dict(tensors, strict=True)
    return model
