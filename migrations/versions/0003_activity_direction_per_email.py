"""activities.direction: the email's, seen from the synced mailbox, the same for every customer

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 18:00:00

Until now a customer's activity was "in" only when that customer was in From, so a customer
in copy of another customer's email to the rep saw it as "out". The rule now
(portal.mail.rules.message_direction): "out" when the mailbox's owner sent the email, i.e.
the address of any mailbox of the owner of the activity's mailbox (whatever its state) is
in From, or the email sits in that mailbox's Sent folder (special use \\Sent); else "in".
Activities without a mailbox keep their direction.
"""
import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

activities = sa.table('activities', sa.column('id', sa.Integer), sa.column('email_id', sa.Integer),
                      sa.column('mailbox_id', sa.Integer), sa.column('direction', sa.String),
                      sa.column('matched_field', sa.String))
emails = sa.table('emails', sa.column('id', sa.Integer), sa.column('from_addr', sa.String))
mailboxes = sa.table('mailboxes', sa.column('id', sa.Integer), sa.column('user_id', sa.Integer),
                     sa.column('address', sa.String))
email_sources = sa.table('email_sources', sa.column('email_id', sa.Integer), sa.column('mailbox_id', sa.Integer),
                         sa.column('folder', sa.String))
folder_checkpoints = sa.table('folder_checkpoints', sa.column('mailbox_id', sa.Integer),
                              sa.column('name', sa.String), sa.column('special_use', sa.String))


def upgrade():
    synced = mailboxes.alias('synced')
    owned = mailboxes.alias('owned')
    # One of the owner's mailbox addresses is the email's From (both are stored lower-cased;
    # lower() on both sides for rows written otherwise).
    from_owner = (
        sa.select(sa.literal(1))
        .select_from(emails.join(owned, sa.func.lower(owned.c.address) == sa.func.lower(emails.c.from_addr))
                     .join(synced, synced.c.user_id == owned.c.user_id))
        .where(emails.c.id == activities.c.email_id, synced.c.id == activities.c.mailbox_id)
        .exists()
    )
    # This mailbox saw the email in its Sent folder.
    in_sent = (
        sa.select(sa.literal(1))
        .select_from(email_sources.join(folder_checkpoints, sa.and_(
            folder_checkpoints.c.mailbox_id == email_sources.c.mailbox_id,
            folder_checkpoints.c.name == email_sources.c.folder)))
        .where(email_sources.c.email_id == activities.c.email_id,
               email_sources.c.mailbox_id == activities.c.mailbox_id,
               sa.func.lower(folder_checkpoints.c.special_use) == '\\sent')
        .exists()
    )
    op.execute(
        activities.update()
        .where(activities.c.mailbox_id.is_not(None))
        .values(direction=sa.case((sa.or_(from_owner, in_sent), 'out'), else_='in'))
    )


def downgrade():
    # The code before 0003 stored "in" exactly when the customer was in From (matched_field
    # 'from'), else "out", and matched_field is kept: recompute that rule, so the old code
    # finds what it would have written itself (the wrong direction of the issue included)
    # on the rows 0003 recomputed and on rows written since.
    op.execute(
        activities.update()
        .where(activities.c.mailbox_id.is_not(None))
        .values(direction=sa.case((activities.c.matched_field == 'from', 'in'), else_='out'))
    )
