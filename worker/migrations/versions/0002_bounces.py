"""bounces and complaints reported after the send

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('bounce',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=True),
    sa.Column('campaign_id', sa.String(length=100), nullable=True),
    sa.Column('reason', sa.String(length=1000), nullable=True),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['delivery_id'], ['delivery.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    with op.batch_alter_table('bounce', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bounce_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_bounce_delivery_id'), ['delivery_id'], unique=False)
        batch_op.create_index('ix_bounce_email_kind_time', ['email', 'kind', 'occurred_at'], unique=False)
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_message_id'), ['message_id'], unique=False)
    with op.batch_alter_table('campaign_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('campaign_state', schema=None) as batch_op:
        batch_op.drop_column('approved_at')
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_message_id'))
    with op.batch_alter_table('bounce', schema=None) as batch_op:
        batch_op.drop_index('ix_bounce_email_kind_time')
        batch_op.drop_index(batch_op.f('ix_bounce_delivery_id'))
        batch_op.drop_index(batch_op.f('ix_bounce_campaign_id'))
    op.drop_table('bounce')
