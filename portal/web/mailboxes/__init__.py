"""A user's own email accounts: connect, watch them sync, sync now, reconnect, delete."""
