"""The OpenAPI document's part about webhooks: the endpoints route, and the events themselves in
OpenAPI 3.1's top-level `webhooks` (what this service POSTs to a receiver: the body, its four
event types, the EIS-Signature header, and what the receiver's answer means)."""

NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
NULLABLE_STRING = {"type": ["string", "null"]}
EVENT_TYPES = ["activity.logged", "outgoing.sent", "outgoing.failed", "mailbox.state_changed"]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _event(event_type: str, data_schema: str, description: str) -> dict:
    return {
        "type": "object", "additionalProperties": False, "required": ["id", "type", "created_at", "data"],
        "description": description,
        "properties": {
            "id": {"type": "string", "pattern": "^evt_[0-9a-f]{32}$",
                   "description": "unique, and the same on every retry and Redeliver: de-duplicate on it"},
            "type": {"const": event_type},
            "created_at": {"type": "string", "format": "date-time",
                           "description": "when the change was committed (the event written)"},
            "data": _ref(data_schema),
        },
    }


SCHEMAS = {
    "WebhookAttempt": {
        "type": "object",
        "properties": {"at": {"type": "string", "format": "date-time"},
                       "status_code": {"type": ["integer", "null"], "description": "null: no HTTP answer"},
                       "error": {**NULLABLE_STRING, "description": "time-out, connection error, or the URL refused"},
                       "response_excerpt": {**NULLABLE_STRING, "description": "the answer's first 500 characters"},
                       "duration_ms": {"type": ["integer", "null"]},
                       "outcome": {"enum": ["delivered", "retry", "failed"]},
                       "redelivery": {"type": "boolean", "description": "asked for with Redeliver"}},
    },
    "WebhookDelivery": {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "event_id": {"type": "string"},
                       "event_type": {"enum": EVENT_TYPES}, "event_created_at": {"type": "string", "format": "date-time"},
                       "mailbox_id": {"type": ["integer", "null"]},
                       "state": {"enum": ["pending", "delivered", "failed"]},
                       "attempts": {"type": "array", "items": _ref("WebhookAttempt")},
                       "next_attempt_at": NULLABLE_TIME, "finished_at": NULLABLE_TIME},
    },
    "WebhookEndpoint": {
        "type": "object",
        "description": "Managed by admins in the portal (Admin -> Webhooks); the secret is never returned.",
        "properties": {"id": {"type": "integer"}, "url": {"type": "string", "format": "uri"},
                       "source": {"enum": ["admin", "environment"],
                                  "description": "environment: EIS_WEBHOOK_URL and EIS_WEBHOOK_SECRET"},
                       "description": {"type": "string"},
                       "event_types": {"type": "array", "items": {"enum": EVENT_TYPES}},
                       "enabled": {"type": "boolean"}, "created_at": {"type": "string", "format": "date-time"},
                       "counts": {"type": "object", "properties": {"pending": {"type": "integer"},
                                                                   "delivered": {"type": "integer"},
                                                                   "failed": {"type": "integer"}}},
                       "recent_deliveries": {"type": "array", "items": _ref("WebhookDelivery"),
                                             "description": "newest event first"}},
    },
    "ActivityLoggedData": {
        "type": "object", "required": ["customer_external_id", "activity"],
        "properties": {"customer_external_id": {"type": "string"},
                       "activity": {**_ref("Activity"),
                                    "description": "as GET /customers/{external_id}/activities returns it, "
                                                   "without text_body (read it there with a token allowed "
                                                   "to see Emails)"}},
    },
    "OutgoingEventData": {
        "type": "object",
        "properties": {"outgoing_id": {"type": "integer"}, "state": {"enum": ["sent", "failed"]},
                       "reason": {**NULLABLE_STRING, "description": "why it failed: recipient_refused, auth_failed, "
                                                                  "mailbox_problematic, ... (null when sent)"},
                       "reason_text": {**NULLABLE_STRING, "description": "the reason in plain words"},
                       "detail": {**NULLABLE_STRING, "description": "the mail server's own words; when sent, the "
                                                                  "recipients it refused, if any"},
                       "customer_external_id": NULLABLE_STRING, "mailbox_id": {"type": "integer"},
                       "email_id": {"type": ["integer", "null"]}, "message_id": {"type": "string"},
                       "subject": {"type": "string"}, "attempts": {"type": "integer"}, "sent_at": NULLABLE_TIME},
    },
    "MailboxStateChangedData": {
        "type": "object",
        "properties": {"mailbox_id": {"type": "integer"}, "address": {"type": "string"},
                       "owner_email": NULLABLE_STRING, "provider": {"enum": ["imap", "microsoft", "google"]},
                       "old_state": {"type": ["string", "null"], "description": "null for a newly connected mailbox"},
                       "old_reason": NULLABLE_STRING,
                       "new_state": {"enum": ["pending", "active", "problematic", "disconnected"]},
                       "reason": {**NULLABLE_STRING, "description": "why Problematic: auth_failed, imap_disabled, "
                                                                  "consent_missing, ..."},
                       "detail": {**NULLABLE_STRING, "description": "the provider's own words"},
                       "at": {"type": "string", "format": "date-time"}},
    },
    "ActivityLoggedEvent": _event("activity.logged", "ActivityLoggedData",
                                  "An email was logged on a customer: one event per customer it is logged on."),
    "OutgoingSentEvent": _event("outgoing.sent", "OutgoingEventData", "An email sent from the CRM went out."),
    "OutgoingFailedEvent": _event("outgoing.failed", "OutgoingEventData",
                                  "An email sent from the CRM failed for good, with the reason."),
    "MailboxStateChangedEvent": _event("mailbox.state_changed", "MailboxStateChangedData",
                                       "A mailbox changed state or reason (e.g. turned Problematic). Delivered "
                                       "after the activities of the same mailbox written before it."),
}

PATHS = {
    "/webhooks/endpoints": {
        "get": {
            "summary": "Webhook endpoints and their recent deliveries (role: admin)",
            "parameters": [{"name": "deliveries", "in": "query", "description": "recent deliveries per endpoint",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 100, "default": 10}}],
            "responses": {"200": {"description": "The endpoints", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"endpoints": {"type": "array", "items": _ref("WebhookEndpoint")}}}}}},
                "400": {"description": "Bad deliveries parameter",
                        "content": {"application/json": {"schema": _ref("Error")}}},
                "401": {"description": "Missing, unknown, expired or revoked token",
                        "content": {"application/json": {"schema": _ref("Error")}}},
                "403": {"description": "Not an admin's token", "content": {"application/json": {"schema": _ref("Error")}}}},
        },
    },
}

SIGNATURE_HEADER = {
    "name": "EIS-Signature", "in": "header", "required": True,
    "description": "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<raw body>\")>. Compute it over the raw "
                   "bytes of the body, compare in constant time, and refuse a t older than a few minutes "
                   "(replays). README \"Webhooks\" has a receiver.",
    "schema": {"type": "string", "pattern": "^t=[0-9]+,v1=[0-9a-f]{64}$"},
}
EVENT_HEADERS = [
    SIGNATURE_HEADER,
    {"name": "EIS-Event-Id", "in": "header", "schema": {"type": "string"}, "description": "the body's id"},
    {"name": "EIS-Event-Type", "in": "header", "schema": {"enum": EVENT_TYPES}, "description": "the body's type"},
]
RECEIVER_ANSWERS = {
    "2XX": {"description": "Received: the delivery is done."},
    "4XX": {"description": "Refused for good (no retry), except 408 and 429, which are retried."},
    "5XX": {"description": "Retried with exponential back-off (30 s, doubling, at most an hour apart) until 24 "
                           "hours after the event; so are time-outs (EIS_WEBHOOK_TIMEOUT_SECONDS) and "
                           "connection errors. Then the delivery fails; an admin can Redeliver it."},
}


def _webhook(event_type: str, schema: str) -> dict:
    return {"post": {
        "summary": f"{event_type}, POSTed to each enabled endpoint that takes it",
        "description": "At least once, in order per mailbox, at most EIS_WEBHOOK_RATE_PER_SECOND requests a "
                       "second to one endpoint (a back-fill is spread out, one event per request).",
        "parameters": EVENT_HEADERS,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(schema)}}},
        "responses": RECEIVER_ANSWERS,
    }}


WEBHOOKS = {
    "activity.logged": _webhook("activity.logged", "ActivityLoggedEvent"),
    "outgoing.sent": _webhook("outgoing.sent", "OutgoingSentEvent"),
    "outgoing.failed": _webhook("outgoing.failed", "OutgoingFailedEvent"),
    "mailbox.state_changed": _webhook("mailbox.state_changed", "MailboxStateChangedEvent"),
}
