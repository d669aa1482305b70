"""initial schema (matches store/tables.py at the foundation commit)

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 05:43:17.745946
"""

from alembic import op
import sqlalchemy as sa

from bai.manager.store.tables import UTCDateTime


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('agents',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='ALIVE', nullable=False),
    sa.Column('status_changed', UTCDateTime(), nullable=False),
    sa.Column('schedulable', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('address', sa.String(length=256), nullable=False),
    sa.Column('runtime', sa.String(length=16), server_default='process', nullable=False),
    sa.Column('scaling_group', sa.String(length=64), server_default='default', nullable=False),
    sa.Column('architecture', sa.String(length=32), server_default='x86_64', nullable=False),
    sa.Column('available_slots', sa.JSON(), nullable=False),
    sa.Column('occupied_slots', sa.JSON(), nullable=False),
    sa.Column('isolation', sa.JSON(), nullable=False),
    sa.Column('version', sa.String(length=32), server_default='', nullable=False),
    sa.Column('first_contact', UTCDateTime(), nullable=False),
    sa.Column('last_heartbeat', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agents'))
    )
    op.create_table('domains',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('total_resource_slots', sa.JSON(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_domains'))
    )
    op.create_table('images',
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('registry', sa.String(length=128), server_default='local', nullable=False),
    sa.Column('runtimes', sa.String(length=64), server_default='process,docker,dummy', nullable=False),
    sa.Column('architecture', sa.String(length=32), server_default='x86_64', nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('min_slots', sa.JSON(), nullable=False),
    sa.Column('service_ports', sa.JSON(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_images'))
    )
    op.create_table('keypair_resource_policies',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('max_concurrent_sessions', sa.Integer(), nullable=False),
    sa.Column('total_resource_slots', sa.JSON(), nullable=False),
    sa.Column('idle_timeout', sa.Integer(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_keypair_resource_policies'))
    )
    op.create_table('scaling_groups',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('scheduler', sa.String(length=16), server_default='fifo', nullable=False),
    sa.Column('agent_selection', sa.String(length=16), server_default='concentrated', nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_scaling_groups'))
    )
    op.create_table('groups',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('domain_name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('total_resource_slots', sa.JSON(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['domain_name'], ['domains.name'], name=op.f('fk_groups_domain_name_domains')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_groups')),
    sa.UniqueConstraint('domain_name', 'name', name='uq_groups_domain_name')
    )
    op.create_table('image_aliases',
    sa.Column('alias', sa.String(length=256), nullable=False),
    sa.Column('target', sa.String(length=256), nullable=False),
    sa.ForeignKeyConstraint(['target'], ['images.name'], name=op.f('fk_image_aliases_target_images'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('alias', name=op.f('pk_image_aliases'))
    )
    op.create_table('users',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('email', sa.String(length=128), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('domain_name', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['domain_name'], ['domains.name'], name=op.f('fk_users_domain_name_domains')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    op.create_table('group_members',
    sa.Column('group_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], name=op.f('fk_group_members_group_id_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_group_members_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_id', 'user_id', name=op.f('pk_group_members'))
    )
    op.create_table('keypairs',
    sa.Column('access_key', sa.String(length=32), nullable=False),
    sa.Column('secret_key', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('is_admin', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('resource_policy', sa.String(length=64), server_default='default', nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('last_used', UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['resource_policy'], ['keypair_resource_policies.name'], name=op.f('fk_keypairs_resource_policy_keypair_resource_policies')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_keypairs_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('access_key', name=op.f('pk_keypairs'))
    )
    op.create_table('sessions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=True),
    sa.Column('type', sa.String(length=16), server_default='INTERACTIVE', nullable=False),
    sa.Column('image', sa.String(length=256), nullable=False),
    sa.Column('registry', sa.String(length=128), server_default='local', nullable=False),
    sa.Column('architecture', sa.String(length=32), server_default='x86_64', nullable=False),
    sa.Column('cluster_mode', sa.String(length=16), server_default='single-node', nullable=False),
    sa.Column('cluster_size', sa.Integer(), server_default='1', nullable=False),
    sa.Column('domain_name', sa.String(length=64), nullable=False),
    sa.Column('group_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('access_key', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='PENDING', nullable=False),
    sa.Column('status_info', sa.Text(), nullable=True),
    sa.Column('status_data', sa.JSON(), nullable=False),
    sa.Column('status_changed', UTCDateTime(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('scheduled_at', UTCDateTime(), nullable=True),
    sa.Column('terminated_at', UTCDateTime(), nullable=True),
    sa.Column('starts_at', UTCDateTime(), nullable=True),
    sa.Column('startup_command', sa.Text(), nullable=True),
    sa.Column('bootstrap_script', sa.Text(), nullable=True),
    sa.Column('result', sa.String(length=16), server_default='UNDEFINED', nullable=False),
    sa.Column('resource_opts', sa.JSON(), nullable=False),
    sa.Column('requested_slots', sa.JSON(), nullable=False),
    sa.Column('occupying_slots', sa.JSON(), nullable=False),
    sa.Column('scaling_group', sa.String(length=64), server_default='default', nullable=False),
    sa.Column('service_ports', sa.JSON(), nullable=False),
    sa.Column('mounts', sa.JSON(), nullable=False),
    sa.Column('environ', sa.JSON(), nullable=False),
    sa.Column('agent_ids', sa.JSON(), nullable=False),
    sa.Column('main_kernel_id', sa.Uuid(), nullable=True),
    sa.Column('callback_url', sa.Text(), nullable=True),
    sa.Column('idle_timeout', sa.Integer(), server_default='1800', nullable=False),
    sa.Column('last_activity_at', UTCDateTime(), nullable=False),
    sa.Column('abusing_reports', sa.JSON(), nullable=False),
    sa.Column('attempt', sa.Integer(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['access_key'], ['keypairs.access_key'], name=op.f('fk_sessions_access_key_keypairs')),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], name=op.f('fk_sessions_group_id_groups')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_sessions_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sessions'))
    )
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.create_index('ix_sessions_access_key_status_changed', ['access_key', 'status_changed'], unique=False)
        batch_op.create_index('ix_sessions_name_access_key', ['name', 'access_key'], unique=False)
        batch_op.create_index('ix_sessions_status', ['status'], unique=False)
        batch_op.create_index('ix_sessions_status_changed', ['status_changed'], unique=False)

    op.create_table('kernels',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('session_id', sa.Uuid(), nullable=False),
    sa.Column('cluster_role', sa.String(length=16), server_default='main', nullable=False),
    sa.Column('cluster_idx', sa.Integer(), server_default='0', nullable=False),
    sa.Column('cluster_hostname', sa.String(length=64), server_default='main1', nullable=False),
    sa.Column('agent_id', sa.String(length=64), nullable=True),
    sa.Column('agent_address', sa.String(length=256), nullable=True),
    sa.Column('status', sa.String(length=16), server_default='PENDING', nullable=False),
    sa.Column('status_info', sa.Text(), nullable=True),
    sa.Column('status_changed', UTCDateTime(), nullable=False),
    sa.Column('image', sa.String(length=256), nullable=False),
    sa.Column('requested_slots', sa.JSON(), nullable=False),
    sa.Column('occupied_slots', sa.JSON(), nullable=False),
    sa.Column('container_id', sa.String(length=128), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('terminated_at', UTCDateTime(), nullable=True),
    sa.Column('last_stat', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_kernels_session_id_sessions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kernels'))
    )
    with op.batch_alter_table('kernels', schema=None) as batch_op:
        batch_op.create_index('ix_kernels_agent_status', ['agent_id', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_kernels_session_id'), ['session_id'], unique=False)

    op.create_table('session_dependencies',
    sa.Column('session_id', sa.Uuid(), nullable=False),
    sa.Column('depends_on', sa.Uuid(), nullable=False),
    sa.ForeignKeyConstraint(['depends_on'], ['sessions.id'], name=op.f('fk_session_dependencies_depends_on_sessions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_session_dependencies_session_id_sessions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('session_id', 'depends_on', name=op.f('pk_session_dependencies'))
    )
    op.create_table('session_history',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('session_id', sa.Uuid(), nullable=False),
    sa.Column('from_status', sa.String(length=16), nullable=True),
    sa.Column('to_status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), server_default='', nullable=False),
    sa.Column('cause', sa.String(length=128), server_default='', nullable=False),
    sa.Column('at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_session_history_session_id_sessions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_session_history'))
    )
    with op.batch_alter_table('session_history', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_session_history_session_id'), ['session_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('session_history', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_session_history_session_id'))

    op.drop_table('session_history')
    op.drop_table('session_dependencies')
    with op.batch_alter_table('kernels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_kernels_session_id'))
        batch_op.drop_index('ix_kernels_agent_status')

    op.drop_table('kernels')
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_sessions_status_changed')
        batch_op.drop_index('ix_sessions_status')
        batch_op.drop_index('ix_sessions_name_access_key')
        batch_op.drop_index('ix_sessions_access_key_status_changed')

    op.drop_table('sessions')
    op.drop_table('keypairs')
    op.drop_table('group_members')
    op.drop_table('users')
    op.drop_table('image_aliases')
    op.drop_table('groups')
    op.drop_table('scaling_groups')
    op.drop_table('keypair_resource_policies')
    op.drop_table('images')
    op.drop_table('domains')
    op.drop_table('agents')
