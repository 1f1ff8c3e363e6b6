"""Fill every store with a realistic, consistent data set (``manage.py seed``).

``generate`` makes the rows, deterministic for a seed; ``sql``, ``cache``,
``analytics`` and ``vectors`` write them to their store; ``runner`` ties it
together and is what the command calls.
"""
