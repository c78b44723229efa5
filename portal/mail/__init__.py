"""Pure mail logic: MIME parsing, logging rules, error classification. No Flask, DB or Redis."""
