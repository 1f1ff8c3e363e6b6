"""The invertible Bloom lookup table finds exactly the items one side lacks."""

from __future__ import annotations

import numpy as np

from consistency.engine.iblt import IBLT


def _random(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64)


def test_iblt__decodes_the_symmetric_difference() -> None:
    rng = np.random.default_rng(7)
    common = _random(rng, 50_000)
    only_a, only_b = _random(rng, 300), _random(rng, 200)
    a, b = IBLT(4096), IBLT(4096)
    a.add(common)
    a.add(only_a)
    b.add(only_b)
    b.add(common)
    decoded = a.subtract(b).decode()
    assert decoded.complete
    assert set(decoded.left) == set(only_a.tolist())
    assert set(decoded.right) == set(only_b.tolist())


def test_iblt__merged_parts_equal_one_table() -> None:
    rng = np.random.default_rng(10)
    rows = _random(rng, 20_000)
    whole, first, second = IBLT(1024), IBLT(1024), IBLT(1024)
    whole.add(rows)
    first.add(rows[:7_000])
    second.add(rows[7_000:])
    first.merge(second)
    other = IBLT(1024)
    other.add(rows[1:])
    assert (first.fp == whole.fp).all()
    assert (first.check == whole.check).all()
    decoded = first.subtract(other).decode()
    assert (decoded.complete, decoded.left, decoded.right) == (True, [int(rows[0])], [])


def test_iblt__identical_sides_decode_to_nothing() -> None:
    rng = np.random.default_rng(8)
    fps = _random(rng, 10_000)
    a, b = IBLT(1024), IBLT(1024)
    a.add(fps)
    b.add(fps[::-1].copy())
    decoded = a.subtract(b).decode()
    assert (decoded.complete, decoded.left, decoded.right) == (True, [], [])


def test_iblt__too_much_difference_is_reported_incomplete_with_an_estimate() -> None:
    rng = np.random.default_rng(9)
    a, b = IBLT(64), IBLT(64)
    a.add(_random(rng, 2000))
    diff = a.subtract(b)
    assert diff.decode().complete is False
    assert diff.estimate_items() >= 500
