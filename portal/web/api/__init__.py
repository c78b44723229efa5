"""The JSON API (/api/v1): bearer tokens (blueprint.py), JSON errors, customers and deals
(crm.py), mailboxes (mailboxes.py), sending (send.py), the OpenAPI document (openapi.py)."""
