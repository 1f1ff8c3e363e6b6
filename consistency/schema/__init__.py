"""Database schemas: what the applied migrations imply, what the database holds, and the difference.

``expected`` renders the migration state of an alias into table shapes, ``live``
introspects the same shapes from the database, ``compare`` lists what differs,
and ``parity`` turns that into findings (``checkconsistency --tag schema``).
"""
