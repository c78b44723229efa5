"""IT: every connected account with its OAuth scopes and token health, a CSV export, the audit log."""
