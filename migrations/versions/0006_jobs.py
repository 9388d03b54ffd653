"""jobs: training, tuning and import runs with their progress and outcome

Written by the ``recsys`` CLI (``train``, ``tune``, ``import``), whoever started it (a person,
a timer, the operator console, which starts runs as a child process of the CLI); read by the
console's Jobs and Overview screens and ``/v1/admin/jobs`` (see ``recsys.ops.jobs``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 19:00:00

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = "0006"
down_revision: Union[str, None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("started_by", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.String(length=256), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("host", sa.String(length=128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_kind_started_at", "jobs", ["kind", "started_at"], unique=False)
    op.create_index("ix_jobs_outcome", "jobs", ["outcome"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_outcome", table_name="jobs")
    op.drop_index("ix_jobs_kind_started_at", table_name="jobs")
    op.drop_table("jobs")
