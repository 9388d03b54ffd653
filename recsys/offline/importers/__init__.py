"""Bulk, idempotent importers into the SQL store (``recsys import ...``) and ``recsys stats``.

Each importer parses its source into an :class:`~recsys.offline.importers.common.ImportBatch`
(users, items, events keyed by external ids) while counting every skipped line with its reason,
then :func:`~recsys.offline.importers.writing.write_batch` writes the batch in ONE transaction
with the fastest path of the dialect (COPY + INSERT ... SELECT on PostgreSQL, executemany on
SQLite; a bulk load with the indexes re-created for a big first import). Every event
carries an idempotency key, so importing the same source twice inserts nothing the second time.
"""

from recsys.offline.importers.common import (
    ImportBatch,
    ImportReport,
    ItemRow,
    SourceError,
)
from recsys.offline.importers.writing import write_batch

__all__ = ["ImportBatch", "ImportReport", "ItemRow", "SourceError", "write_batch"]
