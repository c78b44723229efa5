"""Microsoft 365 / Outlook and Google mailboxes over OAuth: providers (providers.py), the
authorization-code flow (flow.py), tokens at rest and their refresh (tokens.py), and
failures in DESIGN.md's reasons (failures.py). Linking the mailbox is accounts/linking.py;
XOAUTH2 itself is the mail core's (portal/mail/xoauth2.py)."""
