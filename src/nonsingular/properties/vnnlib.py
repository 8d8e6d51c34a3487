"""A parser for the VNNLIB subset of VNN-COMP: text in, a `Property` out, nothing evaluated.

Accepted: `(declare-const X_i Real)` / `(declare-const Y_j Real)` (indices dense from 0); `(assert A)` where A is
a comparison `(<= a b)` / `(>= a b)` between an input and a number (the box), or between two outputs or an output
and a number (the unsafe region); `(and ...)` of those; `(or ...)` whose disjuncts are such comparisons or
`(and ...)` of them. Top-level asserts are conjoined. An `or` over inputs only is a union of boxes, one over
outputs only a union of unsafe conjunctions; an `or` whose disjuncts mix inputs and outputs pairs each box with
its own conjunction (then it must be the only `or`). Numbers are decimals (`-1.5`, `3e-2`, `(- 0.5)`). Anything
else is a `PropertyError` naming the line. Sizes are bounded: the file (after gunzip), the nesting depth, the
declared indices and the constraint matrix, so a hostile file cannot exhaust memory.
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .property import Case, Conjunction, Property, PropertyError

__all__ = ["MAX_BYTES", "MAX_VARIABLES", "load_vnnlib", "parse_vnnlib"]

#: Largest property text accepted (after decompression), bytes: VNN-COMP's largest are tens of MiB.
MAX_BYTES = 512 * 2**20
#: Largest number of inputs or outputs (a 3 x 224 x 224 image is 150,528).
MAX_VARIABLES = 2**22
#: Largest number of coefficients in the unsafe region's matrices together.
MAX_COEFFICIENTS = 2**26
#: Deepest nesting of parentheses.
MAX_DEPTH = 32

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(0|[1-9]\d{0,8})")


@dataclass
class _Atom:
    text: str
    line: int


@dataclass
class _List:
    items: list[_Atom | _List]
    line: int


_Expr = _Atom | _List


def _tokens(text: str) -> list[_Atom]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        code = line.split(";", 1)[0]
        out += [_Atom(m.group(0), number) for m in _TOKEN.finditer(code)]
    return out


def _expressions(tokens: list[_Atom]) -> list[_Expr]:
    """The top-level S-expressions (iterative, so depth is bounded by MAX_DEPTH, not by Python's stack)."""
    top: list[_Expr] = []
    stack: list[_List] = []
    for tok in tokens:
        if tok.text == "(":
            if len(stack) >= MAX_DEPTH:
                raise PropertyError(f"line {tok.line}: nesting deeper than {MAX_DEPTH} levels")
            stack.append(_List([], tok.line))
        elif tok.text == ")":
            if not stack:
                raise PropertyError(f"line {tok.line}: unbalanced ')'")
            done = stack.pop()
            (stack[-1].items if stack else top).append(done)
        elif stack:
            stack[-1].items.append(tok)
        else:
            raise PropertyError(f"line {tok.line}: '{_short(tok.text)}' outside any expression")
    if stack:
        raise PropertyError(f"line {stack[-1].line}: '(' never closed")
    return top


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _head(expr: _List) -> str:
    first = expr.items[0] if expr.items else None
    return first.text if isinstance(first, _Atom) else ""


@dataclass
class _Row:
    """One output inequality sum_j coef[j] y_j <= rhs."""

    coef: dict[int, float]
    rhs: float


@dataclass
class _Bounds:
    """Input atoms: (index, is_upper, value), and output rows."""

    x: list[tuple[int, bool, float, int]] = field(default_factory=list)
    y: list[_Row] = field(default_factory=list)


@dataclass
class _State:
    declared: dict[str, set[int]] = field(default_factory=lambda: {"X": set(), "Y": set()})
    top: _Bounds = field(default_factory=_Bounds)
    ors: list[tuple[int, list[_Bounds]]] = field(default_factory=list)  # (line, disjuncts)


def _number(expr: _Expr) -> float | None:
    """The value of a numeral `c` or `(- c)`, else None."""
    if isinstance(expr, _Atom):
        if not _NUMBER.fullmatch(expr.text):
            return None
        value = float(expr.text)
        if not math.isfinite(value):
            raise PropertyError(f"line {expr.line}: number {_short(expr.text)} is out of range")
        return value
    if len(expr.items) == 2 and _head(expr) == "-":
        inner = _number(expr.items[1])
        return None if inner is None else -inner
    return None


def _variable(expr: _Expr, state: _State) -> tuple[str, int] | None:
    if not isinstance(expr, _Atom):
        return None
    m = _VARIABLE.fullmatch(expr.text)
    if m is None:
        return None
    kind, index = m.group(1), int(m.group(2))
    if index not in state.declared[kind]:
        raise PropertyError(f"line {expr.line}: {expr.text} is used but never declared")
    return kind, index


def _comparison(expr: _List, state: _State, into: _Bounds) -> None:
    """Add one `(<= a b)` / `(>= a b)` to `into`."""
    op = _head(expr)
    if op not in ("<=", ">=") or len(expr.items) != 3:
        raise PropertyError(
            f"line {expr.line}: expected a comparison (<= a b) or (>= a b), got '({_short(op)} ...)' with "
            f"{len(expr.items) - 1} operands"
        )
    a, b = expr.items[1], expr.items[2]
    va, vb = _variable(a, state), _variable(b, state)
    ca, cb = _number(a), _number(b)
    if op == ">=":  # a >= b  is  b <= a
        va, vb, ca, cb = vb, va, cb, ca
    # Now: (left) <= (right)
    if va is not None and cb is not None and va[0] == "X":
        into.x.append((va[1], True, cb, expr.line))
    elif ca is not None and vb is not None and vb[0] == "X":
        into.x.append((vb[1], False, ca, expr.line))
    elif va is not None and vb is not None and va[0] == "Y" and vb[0] == "Y":
        coef = {va[1]: 1.0}
        coef[vb[1]] = coef.get(vb[1], 0.0) - 1.0
        into.y.append(_Row(coef, 0.0))
    elif va is not None and cb is not None and va[0] == "Y":
        into.y.append(_Row({va[1]: 1.0}, cb))
    elif ca is not None and vb is not None and vb[0] == "Y":
        into.y.append(_Row({vb[1]: -1.0}, -ca))
    else:
        raise PropertyError(
            f"line {expr.line}: unsupported comparison: operands must be an input and a number, two outputs, or "
            "an output and a number"
        )


def _conjunction(expr: _Expr, state: _State, into: _Bounds) -> None:
    """A comparison or an `(and ...)` of comparisons (nested `and`s flatten)."""
    if not isinstance(expr, _List):
        raise PropertyError(f"line {expr.line}: expected a constraint, got '{_short(expr.text)}'")
    if _head(expr) == "and":
        for item in expr.items[1:]:
            _conjunction(item, state, into)
    elif _head(expr) == "or":
        raise PropertyError(f"line {expr.line}: an 'or' inside 'and' or 'or' is not supported (only at the top)")
    else:
        _comparison(expr, state, into)


def _statement(expr: _Expr, state: _State) -> None:
    if not isinstance(expr, _List):
        raise PropertyError(f"line {expr.line}: unexpected '{_short(expr.text)}'")
    head = _head(expr)
    if head == "declare-const":
        if len(expr.items) != 3 or not all(isinstance(i, _Atom) for i in expr.items):
            raise PropertyError(f"line {expr.line}: expected (declare-const NAME Real)")
        name, sort = expr.items[1], expr.items[2]
        assert isinstance(name, _Atom) and isinstance(sort, _Atom)  # checked just above
        m = _VARIABLE.fullmatch(name.text)
        if m is None:
            raise PropertyError(
                f"line {expr.line}: only variables X_i and Y_j are supported, got '{_short(name.text)}'"
            )
        if sort.text != "Real":
            raise PropertyError(f"line {expr.line}: {name.text} must be declared Real, got '{_short(sort.text)}'")
        kind, index = m.group(1), int(m.group(2))
        if index >= MAX_VARIABLES:
            raise PropertyError(f"line {expr.line}: {name.text} exceeds the limit of {MAX_VARIABLES} variables")
        if index in state.declared[kind]:
            raise PropertyError(f"line {expr.line}: {name.text} is declared twice")
        state.declared[kind].add(index)
    elif head == "assert":
        if len(expr.items) != 2 or not isinstance(expr.items[1], _List):
            raise PropertyError(f"line {expr.line}: expected (assert CONSTRAINT)")
        body = expr.items[1]
        if _head(body) == "or":
            disjuncts = []
            for item in body.items[1:]:
                part = _Bounds()
                _conjunction(item, state, part)
                disjuncts.append(part)
            if not disjuncts:
                raise PropertyError(f"line {body.line}: an empty 'or'")
            state.ors.append((body.line, disjuncts))
        else:
            _conjunction(body, state, state.top)
    else:
        raise PropertyError(
            f"line {expr.line}: unsupported statement '({_short(head)} ...)'; only declare-const and assert are"
        )


def _dense(indices: set[int], kind: str) -> int:
    n = len(indices)
    if n and max(indices) != n - 1:
        missing = min(set(range(n)) - indices)
        raise PropertyError(f"{kind}_{missing} is never declared (variables must be numbered 0 to n-1)")
    return n


def _box(atoms: list[tuple[int, bool, float, int]], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = [-math.inf] * n, [math.inf] * n
    for index, is_upper, value, _line in atoms:
        if is_upper:
            hi[index] = min(hi[index], value)
        else:
            lo[index] = max(lo[index], value)
    lower = torch.tensor(lo, dtype=torch.float64)
    upper = torch.tensor(hi, dtype=torch.float64)
    for bound, side in ((lower, "lower"), (upper, "upper")):
        missing = (~torch.isfinite(bound)).nonzero()
        if len(missing):
            raise PropertyError(f"input X_{int(missing[0])} has no {side} bound (every input needs both)")
    empty = (lower > upper).nonzero()
    if len(empty):
        i = int(empty[0])
        line = max(a[3] for a in atoms if a[0] == i)
        raise PropertyError(
            f"line {line}: the bounds of X_{i} are contradictory ({lower[i].item()!r} > "
            f"{upper[i].item()!r}): an empty input box"
        )
    return lower, upper


def _matrix(rows: list[_Row], m: int) -> Conjunction:
    if len(rows) * max(m, 1) > MAX_COEFFICIENTS:
        raise PropertyError(f"the output constraints exceed {MAX_COEFFICIENTS} coefficients")
    c = torch.zeros((len(rows), m), dtype=torch.float64)
    d = torch.zeros((len(rows),), dtype=torch.float64)
    for r, row in enumerate(rows):
        for j, v in row.coef.items():
            c[r, j] += v
        d[r] = row.rhs
    return Conjunction(c, d)


def _build(state: _State) -> Property:
    n = _dense(state.declared["X"], "X")
    m = _dense(state.declared["Y"], "Y")
    if n == 0:
        raise PropertyError("no input variable X_i is declared")
    if m == 0:
        raise PropertyError("no output variable Y_j is declared")
    mixed = [(line, d) for line, d in state.ors if any(p.x for p in d) and any(p.y for p in d)]
    x_ors = [(line, d) for line, d in state.ors if all(not p.y for p in d)]
    y_ors = [(line, d) for line, d in state.ors if all(not p.x for p in d)]
    if mixed and len(state.ors) > 1:
        raise PropertyError(f"line {mixed[0][0]}: an 'or' mixing input and output constraints must be the only 'or'")
    if len(x_ors) > 1:
        raise PropertyError(f"line {x_ors[1][0]}: a second 'or' over input constraints is not supported")
    if len(y_ors) > 1:
        raise PropertyError(f"line {y_ors[1][0]}: a second 'or' over output constraints is not supported")
    top = state.top
    if mixed:
        cases = []
        for part in mixed[0][1]:
            lower, upper = _box(top.x + part.x, n)
            cases.append(Case(lower, upper, (_matrix(top.y + part.y, m),)))
    else:
        x_parts = x_ors[0][1] if x_ors else [_Bounds()]
        y_parts = y_ors[0][1] if y_ors else [_Bounds()]
        unsafe = tuple(_matrix(top.y + p.y, m) for p in y_parts)
        cases = []
        for part in x_parts:
            lower, upper = _box(top.x + part.x, n)
            cases.append(Case(lower, upper, unsafe))
    return Property(tuple(cases), n, m)


def parse_vnnlib(text: str) -> Property:
    """The property a VNNLIB text states (see the module docstring for the subset).

    Raises:
        PropertyError: one line, with the line number where there is one.
    """
    if len(text) > MAX_BYTES:
        raise PropertyError(f"the property text exceeds {MAX_BYTES // 2**20} MiB")
    state = _State()
    for expr in _expressions(_tokens(text)):
        _statement(expr, state)
    return _build(state)


def load_vnnlib(path: str | Path) -> Property:
    """Read and parse a `.vnnlib` or `.vnnlib.gz` file (read only; the size limit applies after gunzip).

    Raises:
        PropertyError: the file is malformed, too large, or outside the subset (names the file and line).
        OSError: the file cannot be read.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        if head == b"\x1f\x8b" or path.suffix == ".gz":
            try:
                with gzip.GzipFile(fileobj=fh) as gz:
                    raw = gz.read(MAX_BYTES + 1)
            except (OSError, EOFError, zlib.error) as err:
                raise PropertyError(f"{path}: not a readable gzip file ({err})") from None
        else:
            raw = fh.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise PropertyError(f"{path}: the property exceeds {MAX_BYTES // 2**20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PropertyError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        return parse_vnnlib(text)
    except PropertyError as err:
        raise PropertyError(f"{path}: {err}") from None
