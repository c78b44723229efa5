"""users: a session generation (disabling a user ends their sessions) and a time zone

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 18:30:00

session_generation is part of every session and remember-me cookie (User.get_id): raising it
ends them all at once. time_zone is the user's own (an IANA name); empty means the
organisation's default (EIS_TIME_ZONE).
"""
import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users') as batch_op:
        batch_op.add_column(sa.Column('session_generation', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('time_zone', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('users') as batch_op:
        batch_op.drop_column('time_zone')
        batch_op.drop_column('session_generation')
