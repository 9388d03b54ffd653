"""model_activations.kind: tell rollbacks from activations

Rollback walks the activation history as a stack (an activation pushes, a rollback pops), so
each row must say which it was; without it, rolling back twice would toggle between two
versions instead of stepping further back.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:45:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('model_activations', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('kind', sa.String(length=16), server_default='activate', nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table('model_activations', schema=None) as batch_op:
        batch_op.drop_column('kind')
