"""mailboxes.released_at: an address taken out of the connected-mailbox registry

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 22:00:00

A mailbox connected by someone who does not own its address made every email involving it
"internal" for everybody. An admin can now release such an address; released rows no longer
count as internal (DESIGN rule 6) and the address may be connected again.
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('mailboxes') as batch:
        batch.add_column(sa.Column('released_at', sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('mailboxes') as batch:
        batch.drop_column('released_at')
