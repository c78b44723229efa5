"""Admin: users, roles and permissions; resync of one, some or all Problematic mailboxes;
run-time settings; queue and worker health."""
