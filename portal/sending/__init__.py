"""Sending email to a customer from the CRM: the checks (checks.py), the message (compose.py),
logging it on the customer and queueing it (accept.py), the send job (deliver.py) and the
copy in Sent (sent_copy.py)."""
