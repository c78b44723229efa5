"""The OpenAPI 3.1 document: describes exactly the routes of this blueprint.

tests/test_api.py checks that every /api/v1 route is documented and nothing else is.
"""
from portal.models.mailboxes import STATES
from portal.web.api import openapi_webhooks
from portal.web.api.blueprint import bp


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(schema_ref: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}}


def _body(schema_ref: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}}


EXTERNAL_ID = {"name": "external_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 200}}
MAILBOX_ID = {"name": "mailbox_id", "in": "path", "required": True, "schema": {"type": "integer"}}
COMMON_ERRORS = {"401": _error("Missing, unknown, expired or revoked token"),
                 "403": _error("The token's user may not do this")}
WRITE_ERRORS = {
    "400": _error("Body is not valid JSON"),
    "415": _error("Body is not JSON"),
    "422": _error("A field is unknown, missing or invalid (`fields`/`field` names it); nothing was written"),
}
HEADER_TEXT = ("no control characters (CR, LF, NUL, ESC, U+2028, ...), also none inside an RFC 2047 "
               "encoded word (=?utf-8?q?...?=) once decoded: names are written into email headers. "
               "Else 422 invalid_field naming the field")

ADDRESS = {"type": "string", "format": "email"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error", "message"],
        "properties": {"error": {"type": "string", "description": "machine-readable code"},
                       "message": {"type": "string", "description": "a sentence for a person"},
                       "field": {"type": "string"}, "fields": {"type": "array", "items": {"type": "string"}}},
    },
    "CustomerInput": {
        "type": "object", "additionalProperties": False, "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 300,
                     "description": "the To's display name of email sent to the customer; " + HEADER_TEXT},
            "primary_email": {"type": ["string", "null"], "format": "email",
                              "description": "null or empty removes the primary address (history kept)"},
            "primary_email_since": {"type": ["string", "null"], "format": "date-time",
                                    "description": "when a changed primary_email became primary; default now. "
                                                   "A customer's first address matches email of any date."},
            "additional_emails": {"type": "array", "items": ADDRESS,
                                  "description": "contact addresses; never matched against email. An address "
                                                 "whose encoded words decode to a control character is "
                                                 "refused (422 invalid_email), as for primary_email"},
        },
    },
    "Customer": {
        "type": "object",
        "properties": {
            "external_id": {"type": "string"}, "name": {"type": "string"},
            "primary_email": {"type": ["string", "null"]},
            "primary_email_history": {"type": "array", "items": {"type": "object", "properties": {
                "address": {"type": "string"}, "since": NULLABLE_TIME, "until": NULLABLE_TIME}}},
            "additional_emails": {"type": "array", "items": {"type": "string"}},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "DealInput": {
        "type": "object", "additionalProperties": False, "required": ["name", "customers"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 300, "description": HEADER_TEXT},
            "owner_email": {"type": ["string", "null"], "format": "email", "description": "an existing user"},
            "customers": {"type": "array", "description": "each customer once, at most one primary",
                          "items": {"type": "object", "additionalProperties": False,
                                    "required": ["external_id", "role"],
                                    "properties": {"external_id": {"type": "string"},
                                                   "role": {"enum": ["primary", "additional"]}}}},
        },
    },
    "Deal": {
        "type": "object",
        "properties": {"external_id": {"type": "string"}, "name": {"type": "string"},
                       "owner_email": {"type": ["string", "null"]},
                       "customers": {"type": "array", "items": {"type": "object", "properties": {
                           "external_id": {"type": "string"}, "role": {"type": "string"}}}}},
    },
    "Activity": {
        "type": "object",
        "required": ["id", "message_id", "subject", "from", "to", "cc", "date", "direction", "mailbox_id"],
        "properties": {
            "id": {"type": "integer"}, "email_id": {"type": "integer"},
            "message_id": {"type": ["string", "null"]}, "subject": {"type": "string"},
            "from": {"type": ["string", "null"]}, "from_name": {"type": ["string", "null"]},
            "to": {"type": "array", "items": {"type": "string"}},
            "cc": {"type": "array", "items": {"type": "string"}},
            "date": NULLABLE_TIME,
            "direction": {"enum": ["in", "out"], "description": "The email's, seen from the synced mailbox, the same for every customer it "
                          "is logged on: out when that mailbox (or another of its owner's) is in From "
                          "or the email is in its Sent folder, else in"},
            "mailbox_id": {"type": ["integer", "null"]},
            "matched_field": {"enum": ["from", "to", "cc"]},
            "deal_external_id": {"type": ["string", "null"],
                                 "description": "set when logged as an additional customer of this deal in copy"},
            "attachments": {"type": "array", "items": {"type": "object", "properties": {
                "filename": {"type": "string"}, "content_type": {"type": "string"}, "size": {"type": "integer"}}}},
            "text_body": {"type": ["string", "null"], "description": "only for users allowed to see Emails"},
            "outgoing": {"type": ["object", "null"], "description": "for email sent from the CRM: its state",
                         "properties": {"id": {"type": "integer"}, "state": {"enum": ["queued", "sent", "failed"]},
                                        "reason": {"type": ["string", "null"]},
                                        "reason_text": {"type": ["string", "null"]},
                                        "detail": {"type": ["string", "null"]}}},
        },
    },
    "MailboxInput": {
        "type": "object", "additionalProperties": False,
        "required": ["address", "password", "imap_host", "imap_port", "imap_security"],
        "properties": {
            "address": ADDRESS,
            "login": {"type": "string", "description": "default: the address"},
            "password": {"type": "string", "writeOnly": True, "description": "tried before anything is saved; "
                                                                           "stored encrypted, never returned"},
            "imap_host": {"type": "string"}, "imap_port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "imap_security": {"enum": ["ssl", "starttls", "none"]},
            "smtp_host": {"type": "string"}, "smtp_port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "smtp_security": {"enum": ["ssl", "starttls", "none"]},
        },
    },
    "Mailbox": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"}, "address": {"type": "string"},
            "provider": {"enum": ["imap", "microsoft", "google"]}, "owner_email": {"type": "string"},
            "state": {"enum": list(STATES)},
            "reason": {"type": ["string", "null"], "description": "why Problematic, or the last transient fault "
                                                                  "while retrying (auth_failed, server_unreachable, ...)"},
            "detail": {"type": ["string", "null"], "description": "the provider's own words"},
            "imap_host": {"type": ["string", "null"]}, "imap_port": {"type": ["integer", "null"]},
            "imap_security": {"type": ["string", "null"]}, "smtp_host": {"type": ["string", "null"]},
            "smtp_port": {"type": ["integer", "null"]}, "smtp_security": {"type": ["string", "null"]},
            "connected_at": {"type": "string", "format": "date-time"},
            "last_sync_at": NULLABLE_TIME, "last_success_at": NULLABLE_TIME, "next_sync_at": NULLABLE_TIME,
            "consecutive_failures": {"type": "integer"},
            "job": {"type": ["string", "null"], "description": "queued / started while a sync job is live"},
            "runs": {"type": "array", "items": {"$ref": "#/components/schemas/SyncRun"},
                     "description": "the 20 most recent kept runs (GET /mailboxes/{id} only): runs that "
                                    "logged or stored mail, failed, changed the mailbox or were asked for; kept "
                                    "EIS_RUN_RETENTION_DAYS (90) days"},
            "quiet_days": {"type": "array", "items": {"$ref": "#/components/schemas/QuietDay"},
                           "description": "quiet polls (scheduled, nothing new) counted per UTC day, the last "
                                          "7 days, newest first (GET /mailboxes/{id} only)"},
        },
    },
    "QuietDay": {
        "type": "object",
        "properties": {
            "day": {"type": "string", "format": "date"}, "polls": {"type": "integer"},
            "imap_commands": {"type": "integer"},
            "first_at": {"type": "string", "format": "date-time"}, "last_at": {"type": "string", "format": "date-time"},
        },
    },
    "SyncRun": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"}, "trigger": {"enum": ["scheduled", "manual", "adhoc", "backfill", "resync"]},
            "status": {"enum": ["running", "succeeded", "failed"]},
            "started_at": {"type": "string", "format": "date-time"}, "finished_at": NULLABLE_TIME,
            "heartbeat_at": {"type": "string", "format": "date-time"},
            "phase": {"type": ["string", "null"]}, "progress_done": {"type": "integer"},
            "progress_total": {"type": "integer"}, "seen": {"type": "integer"}, "logged": {"type": "integer"},
            "duplicates": {"type": "integer"},
            "ignored": {"type": "object", "additionalProperties": {"type": "integer"},
                        "description": "count by reason: internal, no_customer, draft_flag, ..."},
            "bad_messages": {"type": "integer"}, "bytes_fetched": {"type": "integer"},
            "imap_commands": {"type": "integer"}, "error_class": {"type": ["string", "null"]},
            "error_detail": {"type": ["string", "null"]},
        },
    },
    "SendEmailInput": {
        "type": "object", "additionalProperties": False,
        "description": "Every field is checked and each failed precondition has its own error code: "
                       "activities_not_permitted (403), no_mailbox, mailbox_not_found (404), mailbox_disconnected "
                       "(409), mailbox_problematic (409, with reason and reconnect_url), mailbox_cannot_send, "
                       "customer_has_no_email, subject_missing, subject_too_long, subject_invalid, body_empty, "
                       "body_too_large (413, with limit_bytes), invalid_cc, attachment_too_large (413, with "
                       "limit_bytes), message_invalid (the composed message, read back, carried a header that "
                       "was not written; with detail). Nothing is logged or sent when any fails.",
        "properties": {
            "mailbox_id": {"type": "integer", "description": "one of the token user's own connected mailboxes"},
            "subject": {"type": "string", "minLength": 1, "maxLength": 900,
                        "description": "one line; a control character in it, also inside an encoded word "
                                       "(=?utf-8?q?...=0D=0A...?=) once decoded, is refused: subject_invalid"},
            "body": {"type": "string", "minLength": 1,
                     "description": "plain text; sent as text and as HTML made from it (escaped, line breaks "
                                    "kept). At most 1 MB of UTF-8 (EIS_SEND_MAX_BODY_BYTES): else 413 "
                                    "body_too_large"},
            "cc": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
                   "description": "addresses, as a list or one comma-separated string; a name or address "
                                  "whose encoded words decode to a control character is refused: invalid_cc"},
            "idempotency_key": {"type": "string", "maxLength": 150,
                                "description": "the same key again returns the first email (200) and sends nothing; "
                                               "also accepted as the Idempotency-Key header"},
            "attachments": {"type": "array", "description": "at most 10 MB in total (EIS_SEND_MAX_ATTACHMENT_BYTES); "
                                                             "a filename's encoded words are decoded and its control "
                                                             "characters become spaces",
                            "items": {"type": "object", "additionalProperties": False,
                                      "required": ["filename", "content_base64"],
                                      "properties": {"filename": {"type": "string"},
                                                     "content_type": {"type": "string"},
                                                     "content_base64": {"type": "string", "contentEncoding": "base64"}}}},
        },
    },
    "OutgoingEmail": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "state": {"enum": ["queued", "sent", "failed"],
                      "description": "queued: waiting or being retried after a transient fault (reason says which)"},
            "reason": {"type": ["string", "null"], "description": "why it failed, or the fault being retried: "
                                                                  "auth_failed, recipient_refused, server_unreachable, ..."},
            "reason_text": {"type": ["string", "null"], "description": "the reason in plain words"},
            "detail": {"type": ["string", "null"], "description": "the mail server's own words"},
            "message_id": {"type": "string"}, "mailbox_id": {"type": "integer"},
            "customer": {"type": ["string", "null"], "description": "the customer's external id"},
            "email_id": {"type": ["integer", "null"], "description": "the email logged on the customer's Activities"},
            "subject": {"type": "string"}, "cc": {"type": "array", "items": {"type": "string"}},
            "attachments": {"type": "array", "items": {"type": "object", "properties": {
                "filename": {"type": "string"}, "content_type": {"type": "string"}, "size": {"type": "integer"}}}},
            "attempts": {"type": "integer"}, "idempotency_key": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"}, "sent_at": NULLABLE_TIME,
        },
    },
    "Activities": {
        "type": "object",
        "properties": {"customer": {"type": "string"}, "limit": {"type": "integer"}, "offset": {"type": "integer"},
                       "activities": {"type": "array", "items": {"$ref": "#/components/schemas/Activity"}}},
    },
}

PATHS = {
    "/customers/{external_id}": {
        "put": {
            "summary": "Create or update a customer (roles: admin, it)",
            "description": "A changed primary_email closes the old address's history entry and opens a new one "
                           "at primary_email_since (default now). Emails already logged stay. A name or address "
                           "holding a line break or another control character, also inside an encoded word "
                           "(=?utf-8?q?...?=) once decoded, is refused with 422 naming the field; nothing is saved.",
            "parameters": [EXTERNAL_ID], "requestBody": _body("CustomerInput"),
            "responses": {"200": _json("Customer", "Updated"), "201": _json("Customer", "Created"),
                          **COMMON_ERRORS, **WRITE_ERRORS},
        },
        "get": {
            "summary": "Read a customer", "parameters": [EXTERNAL_ID],
            "description": "Needs the Activities permission (403 activities_not_permitted without it), as the "
                           "customer pages do.",
            "responses": {"200": _json("Customer", "The customer"), **COMMON_ERRORS, "404": _error("No such customer")},
        },
    },
    "/deals/{external_id}": {
        "put": {
            "summary": "Create or update a deal and its customers (roles: admin, it)",
            "description": "A name holding a control character (also inside an encoded word once decoded) is "
                           "refused with 422 invalid_field; nothing is saved.",
            "parameters": [EXTERNAL_ID], "requestBody": _body("DealInput"),
            "responses": {"200": _json("Deal", "Updated"), "201": _json("Deal", "Created"),
                          **COMMON_ERRORS, **WRITE_ERRORS},
        },
    },
    "/customers/{external_id}/activities": {
        "get": {
            "summary": "Emails logged on a customer, newest first",
            "description": "Needs the Activities permission; text_body only with the Emails permission.",
            "parameters": [EXTERNAL_ID,
                           {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
                           {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}}],
            "responses": {"200": _json("Activities", "The activities"), **COMMON_ERRORS,
                          "400": _error("Bad limit or offset"), "404": _error("No such customer")},
        },
    },
    "/customers/{external_id}/emails": {
        "post": {
            "summary": "Send an email to the customer's primary address from one of your mailboxes",
            "description": "Logged on the customer's Activities at once (direction out) and queued; the send "
                           "queue delivers it through the mailbox's SMTP server, retrying transient faults. "
                           "A refused login fails it and makes the mailbox Problematic. Read its state with "
                           "GET /outgoing-emails/{id} or on the activity's `outgoing`.",
            "parameters": [EXTERNAL_ID,
                           {"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "maxLength": 150}}],
            "requestBody": _body("SendEmailInput"),
            "responses": {"202": _json("OutgoingEmail", "Accepted: logged and queued"),
                          "200": _json("OutgoingEmail", "The same idempotency key again: the first email, "
                                                        "nothing new sent"),
                          "401": COMMON_ERRORS["401"],
                          "403": _error("activities_not_permitted"),
                          "404": _error("No such customer (not_found), or mailbox_not_found"),
                          "409": _error("mailbox_problematic (reason, reconnect_url) or mailbox_disconnected"),
                          "413": _error("attachment_too_large or body_too_large (limit_bytes)"),
                          **WRITE_ERRORS,
                          "422": _error("no_mailbox, mailbox_not_found, mailbox_cannot_send, customer_has_no_email, "
                                        "subject_missing, subject_too_long, subject_invalid, body_empty, invalid_cc, "
                                        "message_invalid, or invalid input")},
        },
    },
    "/outgoing-emails/{outgoing_id}": {
        "get": {
            "summary": "An email sent from the CRM: queued, sent or failed with its reason "
                       "(needs the Activities permission)",
            "parameters": [{"name": "outgoing_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {"200": _json("OutgoingEmail", "The outgoing email"), "401": COMMON_ERRORS["401"],
                          "404": _error("No such outgoing email you may see")},
        },
    },
    "/me/mailboxes": {
        "post": {
            "summary": "Link an IMAP/SMTP mailbox to the token's own user (or reconnect a Problematic one)",
            "description": "The credentials are tried first; nothing is saved when the login fails. A Problematic "
                           "mailbox of the same address is reconnected in place, keeping its checkpoints (200). "
                           "The first sync (back-fill) is queued. Only addresses at EIS_MAILBOX_DOMAINS "
                           "(when set) may be linked, and IMAP/SMTP hosts on internal addresses (loopback, "
                           "private, link-local, metadata) only when EIS_MAIL_HOSTS_ALLOW names them; both are "
                           "refused before anything is tried.",
            "requestBody": _body("MailboxInput"),
            "responses": {"201": _json("Mailbox", "Linked"), "200": _json("Mailbox", "Reconnected"),
                          "401": COMMON_ERRORS["401"],
                          "409": _error("already_connected, or mailbox_taken by another user"),
                          **WRITE_ERRORS,
                          "422": _error("invalid input; domain_not_allowed, host_not_allowed, not_an_imap_server; "
                                        "or the login failed: authentication_failed, connection_failed, tls_failed, "
                                        "imap_disabled (message has the server's words)")},
        },
        "get": {
            "summary": "The token's user's mailboxes",
            "responses": {"200": {"description": "The mailboxes", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"mailboxes": {"type": "array", "items": {
                    "$ref": "#/components/schemas/Mailbox"}}}}}}}, "401": COMMON_ERRORS["401"]},
        },
    },
    "/me/mailboxes/{mailbox_id}": {
        "delete": {
            "summary": "Disconnect one of your mailboxes: credentials wiped, logged email kept",
            "parameters": [MAILBOX_ID],
            "responses": {"200": _json("Mailbox", "Disconnected"), "401": COMMON_ERRORS["401"],
                          "404": _error("Not your mailbox")},
        },
    },
    "/mailboxes/{mailbox_id}": {
        "get": {
            "summary": "A mailbox's state, reason, provider's words and recent runs (owner, support, it, admin)",
            "parameters": [MAILBOX_ID],
            "responses": {"200": _json("Mailbox", "The mailbox"), "401": COMMON_ERRORS["401"],
                          "404": _error("No such mailbox you may see")},
        },
    },
    "/mailboxes/{mailbox_id}/sync": {
        "post": {
            "summary": "Queue a sync now (owner, support, admin); idempotent",
            "parameters": [MAILBOX_ID],
            "responses": {"202": {"description": "Queued (queued: true) or already queued/running (queued: false)",
                                  "content": {"application/json": {"schema": {"type": "object", "properties": {
                                      "mailbox_id": {"type": "integer"}, "queued": {"type": "boolean"},
                                      "job": {"type": ["string", "null"]}}}}}},
                          **COMMON_ERRORS, "404": _error("No such mailbox you may see"),
                          "409": _error("mailbox_problematic / mailbox_disconnected: reconnect first")},
        },
    },
}


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Email Integration Service API", "version": "1",
                 "description": "Errors are JSON {error, message}. Authenticate with "
                                "'Authorization: Bearer <token>' (flask --app portal eis token create "
                                "--user EMAIL [--days N]). A token expires (EIS_API_TOKEN_DAYS, 365 by default; "
                                "the expiry is shown at creation) and can be revoked (eis token revoke, or on "
                                "the user's admin page); both answer 401. Ids that no row can have are 404; "
                                "a NUL character anywhere, or JSON nested deeper than 64, is 400."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {**SCHEMAS, **openapi_webhooks.SCHEMAS}},
        "paths": {**PATHS, **openapi_webhooks.PATHS},
        "webhooks": openapi_webhooks.WEBHOOKS,  # what this service POSTs to the CRM
    }


@bp.get("/openapi.json")
def openapi():
    return document()
