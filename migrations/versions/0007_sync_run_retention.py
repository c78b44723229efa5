"""Sync history with a lifetime: quiet polls counted per mailbox per day, runs pruned by age

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 21:30:00

Every poll wrote a sync_runs row and none was ever deleted: about 96,000 rows a day at
1,000 mailboxes. A quiet poll is now a count in sync_quiet_days (one row per mailbox per
day); the runs that did something are kept EIS_RUN_RETENTION_DAYS and pruned by started_at,
hence the index. mailboxes.recent_messages keeps the busyness the scheduler used to sum
from the last day's runs.
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'sync_quiet_days',
        sa.Column('mailbox_id', sa.Integer(), sa.ForeignKey('mailboxes.id'), primary_key=True),
        sa.Column('day', sa.Date(), primary_key=True),
        sa.Column('polls', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('imap_commands', sa.BigInteger(), nullable=False, server_default='0'),
        sa.Column('seconds', sa.Float(), nullable=False, server_default='0'),
        sa.Column('first_at', sa.DateTime(), nullable=False),
        sa.Column('last_at', sa.DateTime(), nullable=False),
    )
    op.create_index('ix_sync_runs_started_at', 'sync_runs', ['started_at'])
    with op.batch_alter_table('mailboxes') as batch:
        batch.add_column(sa.Column('recent_messages', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('recent_messages_at', sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('mailboxes') as batch:
        batch.drop_column('recent_messages_at')
        batch.drop_column('recent_messages')
    op.drop_index('ix_sync_runs_started_at', table_name='sync_runs')
    op.drop_table('sync_quiet_days')
