"""Connecting Microsoft 365 / Outlook and Google mailboxes with OAuth: connect, callback, reconnect."""
