"""An invertible Bloom lookup table over 64-bit row fingerprints, in NumPy.

Each side of a comparison streams its rows' fingerprints into its own table;
subtracting the two tables cancels every row both sides hold, and peeling the
rest lists exactly the fingerprints only one side holds. Memory is set by how
much drift the table can decode, not by how many rows were streamed: a 10M-row
audit holds two 3 MB tables. Which row a fingerprint belongs to is not kept
here: each side spills (fingerprint, locator) records to a temporary file
(``rowdiff.Spill``) and looks the decoded fingerprints up there.

Eppstein & Goodrich, "Straggler identification in round-trip data streams via
Newton's identities and invertible Bloom filters" (2007).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from consistency.engine.ibltsize import K, size_for

_MIX = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xC2B2AE3D27D4EB4F),
    np.uint64(0x165667B19E3779F9),
    np.uint64(0xD6E8FEB86659FD93),
)


def mix(values: np.ndarray) -> np.ndarray:
    """A cheap 64-bit mixer (multiply, xor-shift): the cell indexes and the check of a fingerprint."""
    with np.errstate(over="ignore"):
        x = values * _MIX[0]
        x ^= x >> np.uint64(29)
        x *= _MIX[1]
        x ^= x >> np.uint64(32)
    return x


@dataclass(frozen=True)
class Decoded:
    """Fingerprints only in the first table (``left``) and only in the second (``right``)."""

    left: list[int]  # signed int64 values
    right: list[int]
    complete: bool  # False: too much difference to decode; retry with more cells


class IBLT:
    """Wrap-around sums (mod 2**64) of fingerprints and of their checks, in K sub-tables.

    Sums stand in for the textbook XORs because NumPy's ``add.at`` has a fast
    path and ``bitwise_xor.at`` does not (about 20x apart here). A cell holding
    exactly one item holds ``+f, +mix(f)`` or ``-f, -mix(f)``: the check both
    proves it pure and gives the side, so no count is kept. The check is the
    mixed value whose bit slices also choose the item's cells.
    """

    def __init__(self, cells: int) -> None:
        # A power of two per sub-table, at most 2**21, so that the K indexes are
        # three 21-bit slices of one mixed hash.
        self.m = size_for(cells)
        self.bits = self.m.bit_length() - 1
        size = K * self.m
        self.fp = np.zeros(size, dtype=np.uint64)
        self.check = np.zeros(size, dtype=np.uint64)
        self.items = 0

    def _indexes(self, mixed: np.ndarray) -> list[np.ndarray]:
        mask = np.uint64(self.m - 1)
        return [((mixed >> np.uint64(21 * j)) & mask).astype(np.intp) + j * self.m for j in range(K)]

    def add(self, fps: np.ndarray) -> None:
        """Insert rows: ``fps`` is an int64 or uint64 array."""
        self._update(fps, np.add, 1)

    def remove(self, fps: np.ndarray) -> None:
        """Take rows out again (the inverse of ``add``): a cached side's changed ranges' old rows."""
        self._update(fps, np.subtract, -1)

    def _update(self, fps: np.ndarray, op: np.ufunc, sign: int) -> None:
        if not len(fps):
            return
        fps = fps.astype(np.uint64, copy=False)
        checks = mix(fps)
        for idx in self._indexes(checks):
            op.at(self.fp, idx, fps)
            op.at(self.check, idx, checks)
        self.items += sign * len(fps)

    def merge(self, other: IBLT) -> None:
        """Add ``other``'s items to this table (tables are sums: parts of one side add up)."""
        if other.m != self.m:
            raise ValueError("cannot merge tables of different sizes")
        with np.errstate(over="ignore"):
            self.fp += other.fp
            self.check += other.check
        self.items += other.items

    def estimate_items(self) -> int:
        """Items in the table, estimated from empty cells (for sizing a retry after a failed decode)."""
        empty = (self.fp == 0) & (self.check == 0)
        estimates = []
        for j in range(K):
            free = int(empty[j * self.m : (j + 1) * self.m].sum()) / self.m
            # An item lands in one cell of each sub-table: P(cell empty) = exp(-items / m).
            estimates.append(self.m * 8 if free == 0 else -self.m * float(np.log(free)))
        return int(max(estimates)) + 1

    def subtract(self, other: IBLT) -> IBLT:
        if other.m != self.m:
            raise ValueError("cannot subtract tables of different sizes")
        out = IBLT(self.m)
        with np.errstate(over="ignore"):
            out.fp = self.fp - other.fp
            out.check = self.check - other.check
        return out

    def decode(self) -> Decoded:
        """Peel pure cells until none is left; complete when every cell is empty. Consumes the table."""
        fp, check = self.fp, self.check
        left: list[int] = []
        right: list[int] = []
        with np.errstate(over="ignore"):
            while True:
                cells = np.flatnonzero(fp)
                if not cells.size:
                    break
                # A pure cell holds +item (left) or -item (right): try both signs.
                plus = mix(fp[cells]) == check[cells]
                minus = mix(-fp[cells]) == -check[cells]
                pure = plus | minus
                if not pure.any():
                    break
                cells, positive = cells[pure], plus[pure]
                item_fp = np.where(positive, fp[cells], -fp[cells])
                # One cell per item: an item can sit pure in several sub-tables at once.
                item_fp, first = np.unique(item_fp, return_index=True)
                positive = positive[first]
                signed = np.where(positive, item_fp, -item_fp)
                item_check = mix(item_fp)
                signed_check = np.where(positive, item_check, -item_check)
                for idx in self._indexes(item_check):
                    np.subtract.at(fp, idx, signed)
                    np.subtract.at(check, idx, signed_check)
                for value, is_left in zip(item_fp.view(np.int64).tolist(), positive.tolist(), strict=True):
                    (left if is_left else right).append(value)
        complete = not fp.any() and not check.any()
        return Decoded(left, right, complete)
