"""items.image_url: the picture a storefront shows next to a recommended item

Returned with every recommendation list (``fields=image_url``) from the in-memory catalogue
snapshot, so it is a column of its own rather than a key buried in ``attributes``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 10:00:00

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = "0004"
down_revision: Union[str, None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_url", sa.String(length=2048), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_column("image_url")
