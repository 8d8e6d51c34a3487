"""The VNNLIB parser: every accepted construct gives the intended boxes and C y <= d, every refusal is one line
naming its line number, and hostile files are refused within bounded memory."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from nonsingular.properties import PropertyError, load_vnnlib, parse_vnnlib
from nonsingular.properties import vnnlib as vnnlib_module


def _decl(n: int, m: int) -> str:
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(m)
    )


def _box(bounds: list[tuple[float, float]]) -> str:
    return "".join(f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n" for i, (lo, hi) in enumerate(bounds))


def test_single_box_and_single_conjunction() -> None:
    text = _decl(2, 3) + _box([(-1.5, 2.0), (0.25, 0.25)]) + "(assert (<= Y_0 Y_2))\n(assert (>= Y_1 3e-1))\n"
    prop = parse_vnnlib(text)
    assert prop.num_inputs == 2 and prop.num_outputs == 3 and len(prop.cases) == 1
    case = prop.cases[0]
    assert case.lower.tolist() == [-1.5, 0.25] and case.upper.tolist() == [2.0, 0.25]  # zero width is legal
    (conj,) = case.unsafe
    assert conj.C.tolist() == [[1.0, 0.0, -1.0], [0.0, -1.0, 0.0]]
    assert conj.d.tolist() == [0.0, -0.3]


def test_reversed_operands_constants_and_negation() -> None:
    text = _decl(1, 2) + "(assert (<= (- 2) X_0))\n(assert (>= 1e3 X_0))\n(assert (<= 4 Y_1))\n(assert (>= 0.5 Y_0))\n"
    prop = parse_vnnlib(text)
    assert prop.cases[0].lower.tolist() == [-2.0] and prop.cases[0].upper.tolist() == [1000.0]
    conj = prop.cases[0].unsafe[0]
    assert conj.C.tolist() == [[0.0, -1.0], [1.0, 0.0]] and conj.d.tolist() == [-4.0, 0.5]


def test_repeated_bounds_keep_the_tightest() -> None:
    text = _decl(1, 1) + "(assert (>= X_0 0))(assert (>= X_0 0.5))(assert (<= X_0 3))(assert (<= X_0 2))"
    case = parse_vnnlib(text + "(assert (<= Y_0 0))").cases[0]
    assert case.lower.tolist() == [0.5] and case.upper.tolist() == [2.0]


def test_output_disjunction_of_conjunctions() -> None:
    text = _decl(1, 3) + _box([(0, 1)]) + "(assert (or (and (>= Y_0 Y_1) (<= Y_2 1)) (and (>= Y_2 Y_1))))"
    (case,) = parse_vnnlib(text).cases
    assert len(case.unsafe) == 2
    assert case.unsafe[0].C.tolist() == [[-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]] and case.unsafe[0].d.tolist() == [0, 1]
    assert case.unsafe[1].C.tolist() == [[0.0, 1.0, -1.0]]


def test_top_level_output_atoms_join_every_disjunct_and_a_bare_atom_is_a_disjunct() -> None:
    text = _decl(1, 2) + _box([(0, 1)]) + "(assert (<= Y_0 5))\n(assert (or (>= Y_0 Y_1) (and (<= Y_1 0))))"
    (case,) = parse_vnnlib(text).cases
    assert [c.C.shape[0] for c in case.unsafe] == [2, 2]
    assert all(c.C[0].tolist() == [1.0, 0.0] and c.d[0] == 5 for c in case.unsafe)


def test_input_disjunction_gives_one_case_per_box_sharing_the_unsafe_region() -> None:
    text = (
        _decl(2, 1)
        + "(assert (>= X_1 0))(assert (<= X_1 1))\n"
        + "(assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 2) (<= X_0 3))))\n(assert (<= Y_0 0))"
    )
    prop = parse_vnnlib(text)
    assert [c.lower.tolist() for c in prop.cases] == [[0.0, 0.0], [2.0, 0.0]]
    assert [c.upper.tolist() for c in prop.cases] == [[1.0, 1.0], [3.0, 1.0]]
    assert prop.cases[0].unsafe[0] is prop.cases[1].unsafe[0]
    assert prop.pieces() == [(0, 0), (1, 0)]


def test_mixed_disjuncts_pair_each_box_with_its_own_conjunction() -> None:
    text = _decl(1, 1) + "(assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 0)) (and (>= X_0 1) (<= X_0 2) (>= Y_0 4))))"
    prop = parse_vnnlib(text)
    assert len(prop.cases) == 2
    assert prop.cases[0].unsafe[0].C.tolist() == [[1.0]] and prop.cases[1].unsafe[0].d.tolist() == [-4.0]


def test_no_output_constraint_makes_every_output_unsafe() -> None:
    prop = parse_vnnlib(_decl(1, 1) + _box([(0, 1)]))
    conj = prop.cases[0].unsafe[0]
    assert conj.C.shape == (0, 1)
    assert conj.violation(torch.zeros(2, 1)).tolist() == [float("-inf")] * 2


def test_comments_blank_lines_and_nested_and_are_accepted() -> None:
    text = "; header\n\n" + _decl(1, 1) + "(assert (and (>= X_0 0) (and (<= X_0 1)))) ; trailing\n(assert (<= Y_0 0))"
    assert parse_vnnlib(text).cases[0].upper.tolist() == [1.0]


def test_gzip_file_and_plain_file_agree(tmp_path: Path) -> None:
    text = _decl(2, 2) + _box([(0, 1), (-1, 0)]) + "(assert (<= Y_0 Y_1))"
    plain, packed = tmp_path / "p.vnnlib", tmp_path / "p.vnnlib.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    a, b = load_vnnlib(plain), load_vnnlib(packed)
    assert torch.equal(a.cases[0].lower, b.cases[0].lower) and torch.equal(
        a.cases[0].unsafe[0].C, b.cases[0].unsafe[0].C
    )


_D = _decl(2, 2)  # 4 lines of declarations: errors below name lines after them
_B = _box([(0, 1), (0, 1)])  # lines 5-8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_D + _B + "(assert (< Y_0 Y_1))", "line 9: expected a comparison"),
        (_D + _B + "(assert (<= Y_0 Y_1 Y_0))", "line 9: expected a comparison"),
        (_D + _B + "(assert (<= X_0 X_1))", "line 9: unsupported comparison"),
        (_D + _B + "(assert (<= X_0 Y_1))", "line 9: unsupported comparison"),
        (_D + _B + "(assert (<= 1 2))", "line 9: unsupported comparison"),
        (_D + _B + "(assert (<= Y_0 (+ 1 2)))", "line 9: unsupported comparison"),
        (_D + _B + "(assert (<= Y_0 nan))", "line 9: unsupported comparison"),
        (_D + _B + "(assert (<= Y_0 1e999))", "line 9: number 1e999 is out of range"),
        (_D + _B + "(assert (<= Y_5 0))", "line 9: Y_5 is used but never declared"),
        (_D + _B + "(assert (not (<= Y_0 0)))", "line 9: expected a comparison"),
        (_D + _B + "(assert (and (or (<= Y_0 0))))", "line 9: an 'or' inside"),
        (_D + _B + "(assert (or))", "line 9: an empty 'or'"),
        (_D + _B + "(assert (<= Y_0 0)", "line 9: '(' never closed"),
        (_D + _B + "(assert (<= Y_0 0)))", "line 9: unbalanced ')'"),
        (_D + _B + "(check-sat)", "line 9: unsupported statement '(check-sat ...)'"),
        (_D + _B + "(assert (<= Y_0 0)) hello", "line 9: 'hello' outside any expression"),
        (_D + _B + "(assert Y_0)", "line 9: expected (assert CONSTRAINT)"),
        (_D + "(declare-const X_0 Real)", "line 5: X_0 is declared twice"),
        (_D + "(declare-const Z_0 Real)", "line 5: only variables X_i and Y_j"),
        (_D + "(declare-const X_2 Int)", "line 5: X_2 must be declared Real"),
        (_D + "(declare-const X_01 Real)", "line 5: only variables X_i and Y_j"),
        (_D + f"(declare-const X_{2**22} Real)", "line 5: X_4194304 exceeds the limit"),
        (_D + "(declare-const X_3 Real)" + _B, "X_2 is never declared"),
        (_D + "(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 0))", "X_1 has no upper bound"),
        (_D + _B + "\n(assert (>= X_1 2))", "line 10: the bounds of X_1 are contradictory"),
        (_decl(0, 1), "no input variable"),
        (_decl(1, 0) + "(assert (>= X_0 0))(assert (<= X_0 1))", "no output variable"),
        (
            _D + _B + "(assert (or (<= Y_0 0) (<= Y_1 0)))\n(assert (or (<= Y_1 0) (<= Y_0 0)))",
            "line 10: a second 'or'",
        ),
        (
            _D + "(assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 0))))\n(assert (or (<= Y_1 0)))",
            "line 5: an 'or' mixing",
        ),
        ("(" * 40 + ")" * 40, "line 1: nesting deeper than 32"),
    ],
)
def test_refusals_are_one_line_with_the_line_number(text: str, message: str) -> None:
    with pytest.raises(PropertyError) as info:
        parse_vnnlib(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_property_error_is_a_value_error_for_the_cli() -> None:
    assert issubclass(PropertyError, ValueError)


def test_hostile_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = tmp_path / "bomb.vnnlib.gz"
    bomb.write_bytes(gzip.compress(b" " * (2**16)))
    monkeypatch.setattr(vnnlib_module, "MAX_BYTES", 2**12)
    with pytest.raises(PropertyError, match="exceeds"):
        load_vnnlib(bomb)
    broken = tmp_path / "broken.vnnlib.gz"
    broken.write_bytes(gzip.compress(b"(declare-const X_0 Real)")[:15])
    with pytest.raises(PropertyError, match="not a readable gzip file"):
        load_vnnlib(broken)
    binary = tmp_path / "bin.vnnlib"
    binary.write_bytes(b"\xff\xfe(declare")
    with pytest.raises(PropertyError, match=r"bin.vnnlib: not UTF-8"):
        load_vnnlib(binary)
    with pytest.raises(OSError):
        load_vnnlib(tmp_path / "missing.vnnlib")
