"""Signed webhooks to the CRM (README "Webhooks").

outbox.py      events written in the transaction of the change they describe, one delivery
               per endpoint; after the commit the endpoints' delivery jobs are woken
events.py      the payloads of mailbox.state_changed and outgoing.sent / outgoing.failed
activities.py  activity.logged: the activity as GET /customers/{id}/activities returns it
signing.py     the EIS-Signature header: t=<unix seconds>,v1=<HMAC-SHA256 hex>
http.py        which URLs may be called (HTTPS, the mail servers' host policy) and one POST
delivery.py    one endpoint's due deliveries in event order, rate-limited, with back-off
endpoints.py   adding and changing endpoints (the admin pages and the API use it)
"""
