"""emails.raw_gz -> emails.raw_packed: the raw message is stored with Zstandard now

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 12:00:00

Rows written before hold gzip and stay as they are: portal.mail.rawstore.unpack reads both.
"""
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('emails') as batch_op:
        batch_op.alter_column('raw_gz', new_column_name='raw_packed')


def downgrade():
    # The code of 0001 reads gzip only: re-compress the Zstandard rows, then rename back.
    import gzip

    import sqlalchemy as sa
    import zstandard

    bind = op.get_bind()
    emails = sa.table('emails', sa.column('id', sa.Integer), sa.column('raw_packed', sa.LargeBinary))
    last = 0
    while True:
        rows = bind.execute(sa.select(emails.c.id, emails.c.raw_packed).where(emails.c.id > last)
                            .order_by(emails.c.id).limit(500)).all()
        if not rows:
            break
        for row_id, packed in rows:
            if packed and packed.startswith(b"\x28\xb5\x2f\xfd"):
                raw = zstandard.ZstdDecompressor().decompress(packed)
                bind.execute(emails.update().where(emails.c.id == row_id)
                             .values(raw_packed=gzip.compress(raw, compresslevel=6)))
        last = rows[-1][0]
    with op.batch_alter_table('emails') as batch_op:
        batch_op.alter_column('raw_packed', new_column_name='raw_gz')
