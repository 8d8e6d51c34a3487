"""`branch_and_bound`: the entry point of complete verification (THEORY.md section 12)."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from ..errors import InputError, ResourceError
from ..runtime.memory import is_out_of_memory
from ..threat import ThreatModel
from .chain import chain_from_model
from .input_search import input_search
from .relu_search import relu_search
from .result import BaBOptions, BaBResult, BaBStatus, ProgressCallback
from .search import Search

__all__ = ["DEFAULT_BATCH_DOMAINS", "DEFAULT_MEMORY_MB", "branch_and_bound"]

#: Domains popped per batch (each gives two children, so bound calls see twice as many).
DEFAULT_BATCH_DOMAINS = 64
#: Budget of the open-domain store, MiB.
DEFAULT_MEMORY_MB = 2048.0


def _spec_tensors(c: Tensor, d: Tensor, groups: Tensor | None, outputs: int) -> tuple[Tensor, Tensor, Tensor]:
    spec = torch.as_tensor(c, dtype=torch.float64)
    offset = torch.as_tensor(d, dtype=torch.float64)
    if spec.dim() != 2 or spec.shape[1] != outputs or spec.shape[0] == 0:
        raise InputError(f"C must be (rows, {outputs}) for a model with {outputs} outputs, got {tuple(spec.shape)}")
    if offset.shape != (spec.shape[0],):
        raise InputError(f"d must have one entry per row of C ({spec.shape[0]}), got shape {tuple(offset.shape)}")
    if not (bool(torch.isfinite(spec).all()) and bool(torch.isfinite(offset).all())):
        raise InputError("C and d must be finite")
    if groups is None:
        mask = torch.ones(1, spec.shape[0], dtype=torch.bool)
    else:
        g = torch.as_tensor(groups)
        if g.shape != (spec.shape[0],) or g.is_floating_point() or (g.numel() and int(g.min()) < 0):
            raise InputError(f"groups must be ({spec.shape[0]},) non-negative integers, one disjunct index per row")
        ids = torch.unique(g)
        mask = g[None, :] == ids[:, None]
    return spec, offset, mask


def branch_and_bound(
    model: nn.Module,
    lower: Tensor,
    upper: Tensor,
    C: Tensor,
    d: Tensor,
    *,
    groups: Tensor | None = None,
    threat: ThreatModel | None = None,
    timeout: float = 60.0,
    seed: int = 0,
    batch_domains: int = DEFAULT_BATCH_DOMAINS,
    memory_mb: float = DEFAULT_MEMORY_MB,
    progress: ProgressCallback | None = None,
    options: BaBOptions | None = None,
) -> BaBResult:
    """Decide whether some x in the box [lower, upper] (and, with a weight threat, some weights in its ball) puts
    the model's output f(x) in the unsafe region.

    The unsafe region is {y : C y <= d, every row} (one conjunction), or with `groups` the union over disjuncts g
    of {y : C_i y <= d_i for every row i with groups[i] == g}. Calling once with groups is equivalent to one call
    per disjunct (the property holds iff every disjunct is empty) but shares the splits between them.

    Args:
        model: a chain of Normalize/Flatten, then Linear and ReLU alternating, ending with a Linear (any model that
            torch.fx traces into that path; e.g. nn.Sequential). Not modified; run in eval mode for checks.
        lower: the input box's lower corner, shape = the model's input shape without the batch dimension, any
            scale; zero-width dimensions (lower == upper) are allowed. Never clipped to a data domain.
        upper: the upper corner, same shape.
        C: (R, K) rows over the K outputs.
        d: (R,) right-hand sides.
        groups: (R,) disjunct index of each row; None: all rows form one conjunction.
        threat: optional weight ball (eps_w, eps_b, weight_ball, weight_mode, layers, layer_eps, channel_eps);
            its eps_x and domain are ignored (the box is the input set). Bounds stay sound; the search is then not
            complete (THEORY.md section 12), so it answers unsat, sat or unknown/timeout.
        timeout: seconds of wall-clock time (attacks included); honoured within about one gradient step.
        seed: seeds the attacks' random starts (results are deterministic for a fixed seed and thread count).
        batch_domains: domains split per batch (each batch bounds 2 x batch_domains children at once).
        memory_mb: budget of the open-domain store, MiB; exceeding it ends the search with `unknown`, and so does
            an allocation the machine refuses during the search (an address-space limit): never a crash.
        progress: called after every batch with a Progress (domains done / open, global lower bound, seconds left).
        options: the search's other knobs (BaBOptions: branching heuristic, gradient steps, attack sizes, ...).

    Returns:
        BaBResult: status `unsat` (proven: every domain has, for each disjunct, a row with a positive lower bound of
        C_i f(x) - d_i, or is an infeasible / positive leaf LP), `sat` (witness: x, and the perturbed weights under
        a weight threat, confirmed by running the model in float32 and float64), `timeout` or `unknown`, with
        statistics (domains visited, depth, seconds bounding / branching / attacking, global lower bound).

    Raises:
        InputError: malformed box, spec or options.
        UnsupportedLayerError: the model is not such a chain (the message names the node).
        ResourceError: an allocation failed before the search began (reading the model; one line).
    """
    start = time.monotonic()
    opts = options or BaBOptions()
    lo = torch.as_tensor(lower, dtype=torch.float64).detach().clone()
    hi = torch.as_tensor(upper, dtype=torch.float64).detach().clone()
    if lo.shape != hi.shape or lo.numel() == 0:
        raise InputError(
            f"lower and upper must have the same non-empty shape, got {tuple(lo.shape)}, {tuple(hi.shape)}"
        )
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
        raise InputError("the input box must be finite")
    if bool((lo > hi).any()):
        raise InputError("the input box has lower > upper in some dimension")
    if not (math.isfinite(timeout) and timeout > 0):
        raise InputError(f"timeout must be a positive number of seconds, got {timeout}")
    if batch_domains < 1:
        raise InputError(f"batch_domains must be >= 1, got {batch_domains}")
    if not (math.isfinite(memory_mb) and memory_mb > 0):
        raise InputError(f"memory_mb must be a positive number of MiB, got {memory_mb}")
    for name in ("proof_margin", "leaf_tolerance"):
        value = getattr(opts, name)
        if not (math.isfinite(value) and value >= 0):  # a negative margin would "prove" violated domains
            raise InputError(f"options.{name} must be a finite number >= 0, got {value}")
    failed = False
    try:
        clock = (start, timeout)
        search = _prepare(model, lo, hi, C, d, groups, threat, clock, seed, batch_domains, memory_mb, progress, opts)
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        failed = True  # raised below, once the exception (and the tensors its frames hold) is gone
    if failed:
        raise ResourceError(
            "branch and bound ran out of memory reading the model (an allocation failed); no search was run"
        )
    wide = int(((hi - lo) > 0).sum())
    mode = "input" if wide <= opts.input_split_dims else "relu"
    try:
        return _search(search, mode)
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
    # Reached only when an allocation failed outside the store (a batch's bounds, an attack) under an address-space
    # limit or on a full machine; the exception and its frames are gone here. No answer, but no crash either (the
    # store's own failures are `unknown` inside the search, with its size).
    return search.finish(
        BaBStatus.UNKNOWN,
        "out of memory while searching (an allocation failed); use a smaller batch_domains or memory budget",
        mode=mode,
    )


def _prepare(
    model: nn.Module,
    lo: Tensor,
    hi: Tensor,
    C: Tensor,
    d: Tensor,
    groups: Tensor | None,
    threat: ThreatModel | None,
    clock: tuple[float, float],
    seed: int,
    batch_domains: int,
    memory_mb: float,
    progress: ProgressCallback | None,
    opts: BaBOptions,
) -> Search:
    """The search's state: the model read as a chain, the spec as tensors (checked), clock = (start, timeout)."""
    start, timeout = clock
    chain = chain_from_model(model, tuple(lo.shape), threat)
    with torch.no_grad():
        outputs = int(chain.forward(chain.h0(lo[None])).shape[1])
    spec, offset, mask = _spec_tensors(C, d, groups, outputs)
    return Search(
        model=model,
        chain=chain,
        lower=lo,
        upper=hi,
        spec=spec,
        offset=offset,
        groups=mask,
        options=opts,
        deadline=start + timeout,
        generator=torch.Generator().manual_seed(seed),
        progress=progress,
        batch_domains=batch_domains,
        memory_mb=memory_mb,
        work_chain=chain.cast(torch.float32) if opts.float32_steps else None,
        start=start,
    )


def _search(search: Search, mode: str) -> BaBResult:
    """The attack before the search, then the search over input boxes or over ReLU splits."""
    opts = search.options
    with torch.enable_grad():  # the attacks and the multipliers' optimisation differentiate
        found = search.attack(search.random_starts(opts.attack_restarts), opts.attack_steps)
        if found is not None:
            return search.finish(BaBStatus.SAT, "a counterexample from the attack before the search", found)
        if search.out_of_time():
            return search.finish(BaBStatus.TIMEOUT, "time ran out in the attack before the search")
        return input_search(search) if mode == "input" else relu_search(search)
