"""Trace a model once and reuse its graph: the fixed cost of every bound call that does not depend on the inputs.

Tracing (torch.fx plus one concrete run, graph.py) costs as much as an IBP pass on a small batch, and branch and
bound, radius bisection and IBP training call the bounds thousands of times on one model. A traced `Graph`
depends on the model's structure and on the input's shape, dtype and device, not on the input's values nor on
the parameters' values: rules read each module's parameters live (`module.weight` at call time). So the graph
is cached per model (weakly: the cache never keeps a model alive) under a fingerprint of

- every submodule (name, identity, type) and its plain attributes (stride, padding, eps, `training`, hooks...,
  by value where they are values, by identity otherwise), which fx may have baked into the graph;
- every parameter and buffer (name, identity, shape, dtype, device): replacing one (`layer.weight = ...`,
  `load_state_dict` with `assign=True`, `.to(...)`) invalidates the plan, in-place updates do not need to;
- the input's shape, dtype and device (shape queries such as `x.size(0)` are baked into the graph);
- the rule table (a rule registered later changes which rule a node has).

A graph whose static arguments hold a copy of a parameter (a cast to float64, `self.weight.t()` computed at
trace time) would not follow in-place updates: graph.py marks it not reusable and it is traced every call.
Clean logits are recomputed on every call (they read the live parameters). What the forward reads from outside
the model (a global variable, a closure) is baked in by fx and not fingerprinted: after changing such a value,
call `PLAN_CACHE.clear()`.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from .graph import Graph, trace
from .registry import RULES

__all__ = ["PLAN_CACHE", "PlanCache", "traced"]

#: Module attributes held elsewhere in the fingerprint (parameters, buffers, children).
_HELD = frozenset({"_parameters", "_buffers", "_modules"})


class _Same:
    """Compares equal only to a wrapper of the same object: attributes that are not plain values are compared by
    identity (and held, so that a freed object's id cannot be reused by another while the plan lives)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


_PLAIN = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
_PLAIN_TYPES = frozenset(_PLAIN)
_EMPTY = (dict,)


def _freeze(value: Any) -> Any:
    """A comparable snapshot of an attribute: plain values by value, containers element by element (so an
    in-place change of a list is seen), tensors by identity and version, anything else by identity."""
    kind = type(value)
    if kind in _PLAIN_TYPES:  # the common case first: this runs for every attribute of every module per call
        return value
    if kind is OrderedDict or kind is dict:
        return (dict, *((k, _freeze(v)) for k, v in value.items())) if value else _EMPTY
    if kind is tuple or kind is list:
        return (kind, *map(_freeze, value))
    if isinstance(value, Tensor):
        return (_Same(value), value._version)
    if isinstance(value, _PLAIN):  # subclasses: IntEnum, str enums
        return value
    return _Same(value)


def _fingerprint(model: nn.Module) -> tuple[tuple[Any, ...], list[Tensor], bool]:
    """What a traced graph of `model` depends on, apart from the input (see the module docstring); with it, from
    the same walk, every parameter and buffer and whether any submodule is in training mode."""
    parts: list[Any] = []
    held: list[Tensor] = []
    training = False
    for name, module in model.named_modules(remove_duplicate=False):
        training = training or module.training
        held += [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]
        # The root is the cache's weak key: holding it here would keep it alive.
        ident = None if module is model else _Same(module)
        attrs = tuple((k, _freeze(v)) for k, v in module.__dict__.items() if k not in _HELD)
        tensors = tuple(
            (k, _Same(t), t.shape, t.dtype, t.device)
            for k, t in (*module._parameters.items(), *module._buffers.items())
            if t is not None
        )
        parts.append((name, ident, type(module), attrs, tensors))
    parts.append((tuple(RULES), tuple(map(_Same, RULES.values()))))
    return tuple(parts), held, training


def _holds(fingerprint: tuple[Any, ...], graph: Graph, model: nn.Module) -> bool:
    """Whether an entry would keep `model` alive (the root itself held as a node's module or function, or as an
    attribute of a submodule): such a plan is not cached, or the weak key could never die."""
    for node in graph.nodes:
        if node.module is model or getattr(node.fn, "__self__", None) is model:
            return True
    return any(_mentions(value, model) for _, _, _, attrs, _ in fingerprint[:-1] for _, value in attrs)


def _mentions(frozen: Any, model: nn.Module) -> bool:
    if isinstance(frozen, _Same):
        return frozen.obj is model
    return isinstance(frozen, tuple) and any(_mentions(v, model) for v in frozen)


class PlanCache:
    """Traced graphs per model (held weakly) and per input signature; see the module docstring.

    Args:
        signatures: input signatures (shape, dtype, device) kept per model, the least recently used dropped
            first (a radius bisection or a branch and bound loop bounds a few batch sizes, not hundreds).
    """

    def __init__(self, signatures: int = 8) -> None:
        if signatures < 1:
            raise ValueError(f"signatures must be >= 1, got {signatures}")
        self.signatures = signatures
        self._plans: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], OrderedDict[Any, Graph]]] = (
            weakref.WeakKeyDictionary()
        )
        #: False: every call traces (as before this cache existed); for comparisons and benchmarks.
        self.enabled = True
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        """Models with at least one cached plan."""
        return len(self._plans)

    def clear(self) -> None:
        self._plans.clear()

    def traced(self, model: nn.Module, x: Tensor) -> tuple[Graph, Tensor]:
        """The traced graph of `model` for inputs like `x`, and the clean logits (N, K) on x in x's dtype, eval
        mode (differentiable in the model's parameters), exactly as `graph.trace` returns them."""
        if not self.enabled:
            return trace(model, x)
        fingerprint, held, training = _fingerprint(model)
        signature = (tuple(x.shape), x.dtype, x.device)
        entry = self._plans.get(model)
        if entry is not None and entry[0] == fingerprint and signature in entry[1]:
            self.hits += 1
            entry[1].move_to_end(signature)
            return entry[1][signature], _clean_logits(model, x, held, training)
        self.misses += 1
        graph, logits = trace(model, x)
        if graph.reusable and not _holds(fingerprint, graph, model):
            if entry is None or entry[0] != fingerprint:
                entry = (fingerprint, OrderedDict())
                self._plans[model] = entry
            entry[1][signature] = graph
            while len(entry[1]) > self.signatures:
                entry[1].popitem(last=False)
        return graph, logits


def _clean_logits(model: nn.Module, x: Tensor, held: list[Tensor], training: bool) -> Tensor:
    """The model's eval-mode output on x in x's dtype (parameters cast, never modified), each submodule's mode
    restored as it was; the same computation as the concrete run of `graph.trace`.

    held: the model's parameters and buffers; training: whether any submodule is in training mode."""
    modes = [(m, m.training) for m in model.modules()] if training else []
    if training:
        model.eval()
    try:
        if all(t.dtype == x.dtype or not t.is_floating_point() for t in held):
            logits: Tensor = model(x)  # nothing to cast: skip functional_call's reparametrisation
        else:
            state = {
                k: v.to(x.dtype) if v.is_floating_point() else v
                for k, v in (*model.named_parameters(), *model.named_buffers())
            }
            logits = torch.func.functional_call(model, state, (x,))
        return logits
    finally:
        for m, mode in modes:
            m.training = mode


#: The cache `margin_bounds` uses (models are held weakly; `PLAN_CACHE.clear()` empties it).
PLAN_CACHE = PlanCache()


def traced(model: nn.Module, x: Tensor) -> tuple[Graph, Tensor]:
    """`PlanCache.traced` on the library's cache."""
    return PLAN_CACHE.traced(model, x)
