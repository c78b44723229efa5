"""Support: every mailbox, Problematic first; one mailbox's history, runs and troubleshooting;
"why was / wasn't this email logged?"; Sync now."""
