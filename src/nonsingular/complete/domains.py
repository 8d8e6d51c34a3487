"""The domain store of the search: preallocated tensors with one row per open domain, not Python objects.

A push writes rows into free slots (growing the tensors by doubling, up to the memory budget); a pop takes the k
rows with the lowest score (best-first) and frees their slots. Nothing is copied that is not pushed or popped, so
a store of 10^4 domains costs k rows of traffic per step, not the whole store.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..runtime.memory import is_out_of_memory

__all__ = ["DomainStore", "MemoryBudgetExceeded"]


class MemoryBudgetExceeded(RuntimeError):
    """The open domains would need more memory than the search's budget, or than the machine gives (an allocation
    failed: an address-space limit, a full machine); the search stops with `unknown`."""


class DomainStore:
    """Open domains as named tensors (capacity, *row_shape) plus a score per row (lower: popped first).

    Args:
        template: one example row per field (its shape and dtype define the field).
        memory_mb: the most the store's tensors may take, MiB.
    """

    def __init__(self, template: dict[str, Tensor], memory_mb: float) -> None:
        self._shapes = {k: (tuple(v.shape), v.dtype) for k, v in template.items()}
        self.row_bytes = sum(v.numel() * v.element_size() for v in template.values()) + 9
        self.max_rows = int(memory_mb * 2**20 // self.row_bytes)
        self._cap = 0
        self._data: dict[str, Tensor] = {}
        self._score = torch.empty(0, dtype=torch.float64)
        self._used = torch.empty(0, dtype=torch.bool)
        self._grow(min(64, max(self.max_rows, 1)))

    def _grow(self, rows: int) -> None:
        if rows > self.max_rows:
            raise MemoryBudgetExceeded(
                f"the domain store would hold {rows} domains of {self.row_bytes} bytes, over its budget "
                f"({self.max_rows} domains)"
            )
        # Everything is allocated before anything is replaced, so a failed allocation leaves the store as it was.
        failed = False
        try:
            data = {k: torch.zeros((rows, *shape), dtype=dtype) for k, (shape, dtype) in self._shapes.items()}
            score = torch.full((rows,), torch.inf, dtype=torch.float64)
            used = torch.zeros(rows, dtype=torch.bool)
        except (MemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            failed = True  # raised below, once the exception (and the tensors its frame holds) is gone
        if failed:
            raise MemoryBudgetExceeded(
                f"out of memory growing the domain store to {rows} domains of {self.row_bytes} bytes "
                f"(its budget allows {self.max_rows}); lower the memory budget below what the machine gives"
            )
        for k, new in data.items():
            if k in self._data:
                new[: self._cap] = self._data[k]
        score[: self._cap], used[: self._cap] = self._score, self._used
        self._data, self._score, self._used, self._cap = data, score, used, rows

    def __len__(self) -> int:
        return int(self._used.sum())

    def min_score(self) -> float:
        """The lowest score of an open domain (+inf when empty): the search's global lower bound."""
        return float(self._score.min()) if self._cap else float("inf")

    def push(self, rows: dict[str, Tensor], score: Tensor) -> None:
        """Store len(score) domains (each field (k, *row_shape)).

        Raises:
            MemoryBudgetExceeded: they do not fit in the budget (the store is unchanged).
        """
        k = int(score.shape[0])
        if k == 0:
            return
        free = (~self._used).nonzero().flatten()
        if free.numel() < k:
            need = len(self) + k
            self._grow(min(max(2 * self._cap, need), self.max_rows) if need <= self.max_rows else need)
            free = (~self._used).nonzero().flatten()
        slots = free[:k]
        for name, value in rows.items():
            self._data[name][slots] = value.to(self._data[name].dtype)
        self._score[slots] = score.to(torch.float64)
        self._used[slots] = True

    def pop_worst(self, k: int) -> tuple[dict[str, Tensor], Tensor]:
        """Remove and return the (up to) k domains with the lowest scores, lowest first, and their scores."""
        k = min(k, len(self))
        if k == 0:
            return {name: v[:0].clone() for name, v in self._data.items()}, self._score[:0].clone()
        _, slots = torch.topk(self._score, k, largest=False, sorted=True)
        rows = {name: v[slots].clone() for name, v in self._data.items()}
        score = self._score[slots].clone()
        self._score[slots] = torch.inf
        self._used[slots] = False
        return rows, score
