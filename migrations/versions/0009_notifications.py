"""notifications (emails owed to people) and users.email_notifications (their opt-out)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 23:00:00

Issue 14, item 2: a mailbox's owner is emailed once per incident when it turns Problematic,
IT gets a daily digest. A row per email, unique per incident or per day and recipient, is
what keeps them from being sent twice; each user may turn them off.
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'notifications',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('dedupe_key', sa.String(length=120), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('mailbox_id', sa.Integer(), nullable=True),
        sa.Column('state_change_id', sa.Integer(), nullable=True),
        sa.Column('day', sa.String(length=10), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('subject', sa.String(length=300), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('sent_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id']),
        sa.ForeignKeyConstraint(['mailbox_id'], ['mailboxes.id']),
        sa.ForeignKeyConstraint(['state_change_id'], ['mailbox_state_changes.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('dedupe_key'),
    )
    op.create_index('ix_notifications_user_id', 'notifications', ['user_id'])
    op.create_index('ix_notifications_status', 'notifications', ['status'])
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('email_notifications', sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade():
    with op.batch_alter_table('users') as batch:
        batch.drop_column('email_notifications')
    op.drop_index('ix_notifications_status', table_name='notifications')
    op.drop_index('ix_notifications_user_id', table_name='notifications')
    op.drop_table('notifications')
