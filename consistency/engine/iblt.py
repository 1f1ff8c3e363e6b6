"""An invertible Bloom lookup table over 64-bit row fingerprints, in NumPy.

Each side of a comparison streams (fingerprint, payload) pairs into its own
table; subtracting the two tables cancels every row both sides hold, and
peeling the rest lists exactly the rows only one side holds. Memory is set by
how much drift the table can decode, not by how many rows were streamed, so a
10M-row audit holds a few MB instead of 160 MB of fingerprints. The payload
must be the same on both sides for the same row (the integer key, or a hash of
the key), so that it cancels too.

Eppstein & Goodrich, "Straggler identification in round-trip data streams via
Newton's identities and invertible Bloom filters" (2007).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

K = 3  # cells per item: one in each of K sub-tables
MAX_CELLS = 1 << 18  # per sub-table: 25 MB a table; more drift than that is split into partitions
_MIX = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xC2B2AE3D27D4EB4F),
    np.uint64(0x165667B19E3779F9),
    np.uint64(0xD6E8FEB86659FD93),
)


def _mix(values: np.ndarray, salt: int) -> np.ndarray:
    """A cheap 64-bit mixer (multiply, xor-shift) so sub-table indexes are independent."""
    with np.errstate(over="ignore"):
        x = values * _MIX[salt]
        x ^= x >> np.uint64(29)
        x *= _MIX[(salt + 1) % len(_MIX)]
        x ^= x >> np.uint64(32)
    return x


@dataclass(frozen=True)
class Decoded:
    """Items only in the first table (``left``) and only in the second (``right``)."""

    left: list[tuple[int, int]]  # (fingerprint, payload), signed int64 values
    right: list[tuple[int, int]]
    complete: bool  # False: too much difference to decode; retry with more cells


class IBLT:
    """Counts and wrap-around sums of fingerprints, payloads and checks in K sub-tables.

    Sums (mod 2**64) stand in for the textbook XORs because NumPy's ``add.at``
    has a fast path and ``bitwise_xor.at`` does not (about 20x apart here); a pure cell then holds +item or -item, and its sign says which
    side the item came from.
    """

    def __init__(self, cells: int) -> None:
        # A power of two per sub-table, at most 2**21, so that the K indexes are
        # three 21-bit slices of one mixed hash.
        self.bits = min(21, max(6, int(cells - 1).bit_length()))
        self.m = 1 << self.bits
        size = K * self.m
        self.count = np.zeros(size, dtype=np.int64)
        self.fp = np.zeros(size, dtype=np.uint64)
        self.payload = np.zeros(size, dtype=np.uint64)
        self.check = np.zeros(size, dtype=np.uint64)
        self.items = 0

    @classmethod
    def cells_for_rows(cls, rows: int) -> int:
        """Sub-table size for a first scan of ``rows``: decodes drift of about 5% of the rows."""
        from consistency.conf import app_settings

        return min(MAX_CELLS, max(app_settings.IBLT_MIN_CELLS, rows // 48))

    def _indexes(self, fps: np.ndarray) -> list[np.ndarray]:
        mixed = _mix(fps, 0)
        mask = np.uint64(self.m - 1)
        return [((mixed >> np.uint64(21 * j)) & mask).astype(np.int64) + j * self.m for j in range(K)]

    def add(self, fps: np.ndarray, payloads: np.ndarray) -> None:
        """Insert rows: ``fps`` and ``payloads`` are int64 or uint64 arrays of equal length."""
        if not len(fps):
            return
        fps = fps.astype(np.uint64, copy=False)
        payloads = payloads.astype(np.uint64, copy=False)
        checks = _mix(fps, 3)
        with np.errstate(over="ignore"):
            for idx in self._indexes(fps):
                np.add.at(self.count, idx, 1)
                np.add.at(self.fp, idx, fps)
                np.add.at(self.payload, idx, payloads)
                np.add.at(self.check, idx, checks)
        self.items += len(fps)

    def estimate_items(self) -> int:
        """Items in the table, estimated from empty cells (for sizing a retry after a failed decode)."""
        empty = (self.count == 0) & (self.fp == 0) & (self.payload == 0)
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
            out.count = self.count - other.count
            out.fp = self.fp - other.fp
            out.payload = self.payload - other.payload
            out.check = self.check - other.check
        return out

    def decode(self) -> Decoded:
        """Peel pure cells until none is left; complete when every cell is empty."""
        count, fp, payload, check = (
            self.count.copy(),
            self.fp.copy(),
            self.payload.copy(),
            self.check.copy(),
        )
        left: list[tuple[int, int]] = []
        right: list[tuple[int, int]] = []
        with np.errstate(over="ignore"):
            while True:
                cells = np.flatnonzero(np.abs(count) == 1)
                if not cells.size:
                    break
                signs = count[cells]
                # A pure cell holds sign * item: undo the sign, then verify the check sum.
                item_fp = np.where(signs > 0, fp[cells], -fp[cells]).astype(np.uint64)
                item_check = np.where(signs > 0, check[cells], -check[cells]).astype(np.uint64)
                pure = _mix(item_fp, 3) == item_check
                if not pure.any():
                    break
                cells, signs, item_fp = cells[pure], signs[pure], item_fp[pure]
                # One cell per item: an item can sit pure in several sub-tables at once.
                item_fp, first = np.unique(item_fp, return_index=True)
                cells, signs = cells[first], signs[first]
                item_payload = np.where(signs > 0, payload[cells], -payload[cells]).astype(np.uint64)
                item_check = _mix(item_fp, 3)
                for idx in self._indexes(item_fp):
                    np.subtract.at(count, idx, signs)
                    np.subtract.at(fp, idx, np.where(signs > 0, item_fp, -item_fp).astype(np.uint64))
                    np.subtract.at(
                        payload, idx, np.where(signs > 0, item_payload, -item_payload).astype(np.uint64)
                    )
                    np.subtract.at(check, idx, np.where(signs > 0, item_check, -item_check).astype(np.uint64))
                pairs = zip(
                    item_fp.view(np.int64).tolist(),
                    item_payload.view(np.int64).tolist(),
                    signs.tolist(),
                    strict=True,
                )
                for f, p, sign in pairs:
                    (left if sign > 0 else right).append((f, p))
        complete = not count.any() and not fp.any() and not payload.any()
        return Decoded(left, right, complete)
