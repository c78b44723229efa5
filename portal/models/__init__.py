"""The data model, one module per aggregate. Import from here."""
from portal.models.audit import AuditEvent, Setting
from portal.models.crm import (
    Customer,
    CustomerContactEmail,
    CustomerPrimaryEmail,
    Deal,
    DealCustomer,
)
from portal.models.mailboxes import FolderCheckpoint, Mailbox, MailboxStateChange
from portal.models.messages import Activity, Email, EmailSource, OutgoingEmail
from portal.models.notifications import Notification
from portal.models.runs import SyncQuietDay, SyncRun
from portal.models.users import ApiToken, User, UserSession
from portal.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = [
    "Activity", "ApiToken", "AuditEvent", "Customer", "CustomerContactEmail",
    "CustomerPrimaryEmail", "Deal", "DealCustomer", "Email", "EmailSource",
    "FolderCheckpoint", "Mailbox", "MailboxStateChange", "Notification", "OutgoingEmail", "Setting",
    "SyncQuietDay", "SyncRun", "User", "UserSession", "WebhookAttempt", "WebhookDelivery", "WebhookEndpoint",
    "WebhookEvent",
]
