"""The send job's body: the exact bytes that were logged, sent through the mailbox's own SMTP
server; for generic IMAP servers the copy is then saved in Sent. A refusal of the account's
credentials makes the mailbox Problematic and is not retried; a permanent rejection of the
message fails it; a transient fault is retried by RQ and fails it at the last attempt."""
from __future__ import annotations

import logging
import smtplib

from portal.accounts import state
from portal.accounts.sessions import SmtpNotConfigured, open_smtp
from portal.extensions import db
from portal.mail import rawstore
from portal.mail.errors import (
    Classified,
    classify_exception,
    classify_text,
    is_mail_fault,
    plain_words,
)
from portal.models import Email, Mailbox, OutgoingEmail
from portal.sending.sent_copy import save_sent_copy_recorded
from portal.timeutil import utcnow
from portal.webhooks import events

log = logging.getLogger(__name__)


# Why an outgoing email failed, in words for the rep (mailbox reasons use plain_words()).
_OUTGOING_WORDS = {
    "recipient_refused": "The mail server refused the recipient's address.",
    "sender_refused": "The mail server refused to send from this address.",
    "message_rejected": "The mail server rejected the message.",
    "mailbox_problematic": "The email account became Problematic before the email was sent; reconnect it.",
    "mailbox_disconnected": "The email account was disconnected before the email was sent.",
    "mailbox_cannot_send": "The email account has no SMTP server to send through.",
    "internal_error": "Something went wrong on our side; it was logged.",
}


def reason_words(reason: str | None) -> str:
    if not reason:
        return ""
    return _OUTGOING_WORDS.get(reason) or plain_words(reason)


class SendFailure(Exception):
    """A classified failure of one attempt: kind is refusal (the account), rejected (this
    message, permanently) or transient (retried)."""

    def __init__(self, kind: str, reason: str, detail: str, refusal_of_account: bool = False):
        super().__init__(f"{reason}: {detail}")
        self.kind, self.reason, self.detail = kind, reason, detail
        self.refusal_of_account = refusal_of_account


def classify_send_failure(exc: BaseException) -> SendFailure:
    if isinstance(exc, SmtpNotConfigured):
        return SendFailure("rejected", "mailbox_cannot_send", str(exc))
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        words = "; ".join(f"{address}: {code} {_text(message)}"
                          for address, (code, message) in exc.recipients.items())
        if all(code >= 500 for code, _ in exc.recipients.values()):
            return SendFailure("rejected", "recipient_refused", words)
        return SendFailure("transient", classify_text(words).reason, words)
    classified: Classified = classify_exception(exc)
    if classified.refusal:
        return SendFailure("refusal", classified.reason, classified.detail, refusal_of_account=True)
    code = getattr(exc, "smtp_code", None)
    if isinstance(exc, smtplib.SMTPResponseException) and isinstance(code, int) and 500 <= code < 600 \
            and classified.reason == "protocol_error":
        reason = "sender_refused" if isinstance(exc, smtplib.SMTPSenderRefused) else "message_rejected"
        return SendFailure("rejected", reason, classified.detail)
    return SendFailure("transient", classified.reason, classified.detail)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def send_outgoing(outgoing_id: int, *, last_attempt: bool = True) -> dict:
    """Send one queued email. Idempotent: a sent (or finally failed) email is left alone.

    A refusal (the account's credentials) fails it, makes the mailbox Problematic and is
    not retried; a permanent rejection of the message fails it; a transient fault is
    recorded and raised so that RQ retries, and fails it at the last attempt.
    """
    outgoing = db.session.get(OutgoingEmail, outgoing_id)
    if outgoing is None:
        return {"outgoing_id": outgoing_id, "skipped": "no such outgoing email"}
    if outgoing.state in ("sent", "failed"):
        return {"outgoing_id": outgoing_id, "state": outgoing.state, "skipped": "already done"}
    mailbox = db.session.get(Mailbox, outgoing.mailbox_id)
    if mailbox.state in (state.PROBLEMATIC, state.DISCONNECTED):
        _finish(outgoing, "failed", f"mailbox_{mailbox.state}",
                f"{mailbox.address} is {mailbox.state}" + (f" ({mailbox.reason})" if mailbox.reason else ""))
        return {"outgoing_id": outgoing_id, "state": "failed", "reason": outgoing.reason}
    email = db.session.get(Email, outgoing.email_id)
    raw = rawstore.unpack(email.raw_packed)
    recipients = [a["address"] for a in (email.to_addrs or [])] + list(outgoing.cc or [])
    outgoing.attempts += 1
    db.session.commit()  # the attempt counts even if the worker dies while sending
    try:
        refused = _deliver(mailbox, raw, recipients)
    except Exception as exc:
        db.session.rollback()
        if not is_mail_fault(exc):
            if last_attempt:
                _finish_safely(outgoing_id, "internal_error", f"{type(exc).__name__}: {exc}")
            raise
        failure = classify_send_failure(exc)
        return _failed_attempt(outgoing_id, failure, last_attempt, exc)
    outgoing = db.session.get(OutgoingEmail, outgoing_id)
    detail = None
    if refused:
        detail = "Some recipients were refused: " + "; ".join(
            f"{address}: {code} {_text(message)}" for address, (code, message) in refused.items())
    _finish(outgoing, "sent", None, detail)
    if mailbox.provider == "imap":  # Microsoft and Google keep a copy in Sent themselves
        save_sent_copy_recorded(outgoing_id, mailbox, raw)
    return {"outgoing_id": outgoing_id, "state": "sent", "message_id": outgoing.message_id}


def _deliver(mailbox: Mailbox, raw: bytes, recipients: list[str]) -> dict:
    with open_smtp(mailbox) as smtp:
        return smtp.send(mailbox.address, recipients, raw)


def _failed_attempt(outgoing_id: int, failure: SendFailure, last_attempt: bool, exc: Exception) -> dict:
    outgoing = db.session.get(OutgoingEmail, outgoing_id)
    if failure.kind == "transient" and not last_attempt:
        # Still queued: RQ retries it after the next interval; the fault is shown meanwhile.
        outgoing.reason, outgoing.detail = failure.reason, failure.detail
        db.session.commit()
        log.info("outgoing email %s: %s, will be retried", outgoing_id, failure)
        raise exc
    if failure.refusal_of_account:
        mailbox = db.session.get(Mailbox, outgoing.mailbox_id)
        if mailbox.state in state.SYNCABLE:
            state.mark_problematic(mailbox, failure.reason, failure.detail)
    _finish(outgoing, "failed", failure.reason, failure.detail)
    if failure.kind == "transient":
        raise exc  # the last attempt: RQ records the job as failed too
    return {"outgoing_id": outgoing_id, "state": "failed", "reason": failure.reason}


def _finish(outgoing: OutgoingEmail, outcome: str, reason: str | None, detail: str | None) -> None:
    outgoing.state, outgoing.reason, outgoing.detail = outcome, reason, (detail or None) and detail[:2000]
    if outcome == "sent":
        outgoing.sent_at = utcnow()
    events.outgoing_finished(outgoing, reason_words(reason))  # the CRM's webhooks, in this commit
    db.session.commit()


def _finish_safely(outgoing_id: int, reason: str, detail: str) -> None:
    try:
        db.session.rollback()
        outgoing = db.session.get(OutgoingEmail, outgoing_id)
        if outgoing is not None and outgoing.state == "queued":
            _finish(outgoing, "failed", reason, detail)
    except Exception:  # the database itself may be what failed; RQ keeps the job's error
        log.exception("outgoing email %s: could not record the failure", outgoing_id)
        db.session.rollback()
