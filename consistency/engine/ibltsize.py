"""How large an IBLT (``iblt.py``) is, without NumPy.

A scan sizes its tables and opens its range cache before it reads a row; kept apart from
``iblt.py``, that takes no NumPy, so each side's first query starts while NumPy loads
(``rowdiff._scan`` loads it meanwhile: 45 ms of a fresh process here).
"""

K = 3  # cells per item: one in each of K sub-tables
MAX_CELLS = 1 << 16  # per sub-table of a first scan's table: 3 MB, decodes ~150,000 differing rows
RETRY_CELLS = 1 << 17  # per sub-table when a retry splits a large drift into partitions


def size_for(cells: int) -> int:
    """The sub-table size a table asked for ``cells`` gets: a power of two, 2**6 to 2**21."""
    return 1 << min(21, max(6, int(cells - 1).bit_length()))


def cells_for_rows(rows: int) -> int:
    """Sub-table size for a first scan of ``rows``: decodes drift of about 5% of the rows."""
    from consistency.conf import app_settings

    return min(MAX_CELLS, max(app_settings.IBLT_MIN_CELLS, rows // 48))
