"""Accounts: connected mailboxes. Linking them (password and OAuth), their sessions with the
mail servers, and their state machine (state.py, the only writer of a mailbox's state,
reason and detail)."""
