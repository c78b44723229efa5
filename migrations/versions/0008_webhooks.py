"""webhooks: endpoints, the outbox of events, deliveries and their attempts

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 21:30:00

The CRM hears about activities, sent emails and mailbox state changes by signed webhooks.
Events are written in the transaction of the change they describe (an outbox), one delivery
row per endpoint that takes the event's type; every HTTP attempt is kept for the admin's log.
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'webhook_endpoints',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('url', sa.String(length=2000), nullable=False),
        sa.Column('secret_encrypted', sa.Text(), nullable=True),
        sa.Column('event_types', sa.JSON(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('description', sa.String(length=200), nullable=False),
        sa.Column('created_by_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['created_by_id'], ['users.id'],
                                name=op.f('fk_webhook_endpoints_created_by_id_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_endpoints')),
    )
    op.create_table(
        'webhook_events',
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('type', sa.String(length=40), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('mailbox_id', sa.Integer(), nullable=True),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['mailbox_id'], ['mailboxes.id'], name=op.f('fk_webhook_events_mailbox_id_mailboxes')),
        sa.PrimaryKeyConstraint('seq', name=op.f('pk_webhook_events')),
        sa.UniqueConstraint('id', name=op.f('uq_webhook_events_id')),
    )
    with op.batch_alter_table('webhook_events') as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_events_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_events_mailbox_id'), ['mailbox_id'], unique=False)
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('event_seq', sa.Integer(), nullable=False),
        sa.Column('endpoint_id', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=10), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(), nullable=True),
        sa.Column('retry_until', sa.DateTime(), nullable=True),
        sa.Column('redelivery', sa.Boolean(), nullable=False),
        sa.Column('last_status', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('finished_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['event_seq'], ['webhook_events.seq'],
                                name=op.f('fk_webhook_deliveries_event_seq_webhook_events'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['endpoint_id'], ['webhook_endpoints.id'],
                                name=op.f('fk_webhook_deliveries_endpoint_id_webhook_endpoints'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
        sa.UniqueConstraint('event_seq', 'endpoint_id', name=op.f('uq_webhook_deliveries_event_seq')),
    )
    with op.batch_alter_table('webhook_deliveries') as batch_op:
        batch_op.create_index('ix_webhook_deliveries_endpoint_state_due',
                              ['endpoint_id', 'state', 'next_attempt_at'], unique=False)
    op.create_table(
        'webhook_attempts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('delivery_id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(), nullable=False),
        sa.Column('status_code', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('response_excerpt', sa.Text(), nullable=True),
        sa.Column('duration_ms', sa.Integer(), nullable=True),
        sa.Column('outcome', sa.String(length=10), nullable=False),
        sa.Column('redelivery', sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(['delivery_id'], ['webhook_deliveries.id'],
                                name=op.f('fk_webhook_attempts_delivery_id_webhook_deliveries'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_attempts')),
    )
    with op.batch_alter_table('webhook_attempts') as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_attempts_delivery_id'), ['delivery_id'], unique=False)


def downgrade():
    op.drop_table('webhook_attempts')
    op.drop_table('webhook_deliveries')
    op.drop_table('webhook_events')
    op.drop_table('webhook_endpoints')
