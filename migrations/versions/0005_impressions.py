"""impressions: what a storefront showed each user; items.created_at index for /v1/latest

``POST /v1/impressions`` stores one row per item shown (position, context, the answer's
request id), so that "shown but not clicked" can be used by models and experiments
(``recsys.store.impressions``). ``GET /v1/latest`` reads items newest first.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 19:00:00

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = "0005"
down_revision: Union[str, None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "impressions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("item_id", BigId, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("context", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.Column("idem_key", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["items.id"],
            name=op.f("fk_impressions_item_id_items"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_impressions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_impressions")),
        sa.UniqueConstraint("idem_key", name=op.f("uq_impressions_idem_key")),
    )
    op.create_index("ix_impressions_user_ts", "impressions", ["user_id", "ts"], unique=False)
    op.create_index("ix_impressions_item_id", "impressions", ["item_id"], unique=False)
    op.create_index("ix_impressions_ts", "impressions", ["ts"], unique=False)
    op.create_index("ix_items_created_at_id", "items", ["created_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_items_created_at_id", table_name="items")
    op.drop_index("ix_impressions_ts", table_name="impressions")
    op.drop_index("ix_impressions_item_id", table_name="impressions")
    op.drop_index("ix_impressions_user_ts", table_name="impressions")
    op.drop_table("impressions")
