"""What the notification emails say: the words and fix steps the mailbox pages show
(mail/errors.py), the provider's own words, and links to the portal at EIS_BASE_URL.
Each email has a text and an HTML part, from templates/notify/."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import current_app

from portal.mail.errors import ACCOUNTS_PAGE, detail_words, fix_steps, plain_words
from portal.models import Mailbox, MailboxStateChange, User
from portal.notify.config import base_url, portal_link

PROVIDER_WORDS = {"imap": "IMAP", "microsoft": "Microsoft 365 / Outlook", "google": "Google"}
DETAIL_IN_DIGEST = 300  # characters of the provider's words per account in the digest
# Steps of fix_steps() that name IT (or the operators) as the one who acts.
IT_STEP_PREFIXES = ("IT", "Operators")
# A provider-specific IT step, shown only when the group has a mailbox of that provider.
PROVIDER_STEPS = {"IT (Microsoft 365)": "microsoft", "IT (Google Workspace)": "google"}
# The pages' reconnect step points at the button beside it; in the email, the link below.
ON_THE_PAGE = f"press Reconnect, beside these steps on {ACCOUNTS_PAGE}, and"
IN_THE_EMAIL = "open the Reconnect link below and"
OWNER_MUST_RECONNECT = ("Nothing for IT to change: the owner must reconnect the account (Reconnect on My email "
                        "accounts, then sign in again or type the new password). Ask them to; they were emailed "
                        "when it broke unless they turned notifications off.")


@dataclass
class Email:
    subject: str
    text: str
    html: str


@dataclass
class DigestEntry:
    mailbox: Mailbox
    owner: User
    since: datetime  # when the incident began (naive UTC)


@dataclass
class DigestGroup:
    reason: str
    words: str
    it_steps: list[str]
    entries: list[DigestEntry] = field(default_factory=list)


def _zone_named(name: str | None) -> ZoneInfo | None:
    try:
        return ZoneInfo(name) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def organisation_zone() -> ZoneInfo:
    return _zone_named(current_app.config.get("EIS_TIME_ZONE")) or ZoneInfo("UTC")


def zone_of(user: User) -> ZoneInfo:
    """The recipient's own time zone, else the organisation's (as the pages do)."""
    return _zone_named(user.time_zone) or organisation_zone()


def when(moment: datetime, user: User) -> str:
    """'2026-12-07 21:04 CET' in the recipient's time zone (the pages' format)."""
    return moment.replace(tzinfo=timezone.utc).astimezone(zone_of(user)).strftime("%Y-%m-%d %H:%M %Z")


def _render(name: str, **values) -> str:
    # The app's Jinja environment without a request: the templates get only what is passed.
    return current_app.jinja_env.get_template(name).render(**values)


def problematic_email(user: User, mailbox: Mailbox, incident: MailboxStateChange) -> Email:
    """To a mailbox's owner: it turned Problematic; why, the provider's words, and Reconnect."""
    reason = incident.reason or mailbox.reason or "protocol_error"
    values = {
        "user": user,
        "address": mailbox.address,
        "provider": PROVIDER_WORDS.get(mailbox.provider, mailbox.provider),
        "since": when(incident.at, user),
        "words": plain_words(reason),
        "detail": incident.detail if incident.detail is not None else mailbox.detail,
        "detail_words": detail_words(incident.detail),
        "steps": [step.replace(ON_THE_PAGE, IN_THE_EMAIL) for step in _steps(reason, {mailbox.provider})],
        "reconnect_url": portal_link("mailboxes.reconnect", mailbox_id=mailbox.id),
        "settings_url": portal_link("main.account"),
        "portal_url": base_url(),
    }
    return Email(subject=f"Action needed: your email account {mailbox.address} has stopped syncing",
                 text=_render("notify/problematic.txt", **values),
                 html=_render("notify/problematic.html", **values))


def _steps(reason: str, providers: set[str]) -> list[str]:
    """The mailbox pages' fix steps, without those for another provider than the ones seen."""
    steps = []
    for step in fix_steps(reason, support_contact=current_app.config.get("EIS_SUPPORT_CONTACT")):
        provider = next((p for prefix, p in PROVIDER_STEPS.items() if step.startswith(prefix)), None)
        if provider is None or provider in providers:
            steps.append(step)
    return steps


def it_steps(reason: str, providers: set[str]) -> list[str]:
    """What IT can do about a reason (the fix steps that name IT), for the providers seen."""
    return [step for step in _steps(reason, providers) if step.startswith(IT_STEP_PREFIXES)] or [OWNER_MUST_RECONNECT]


def digest_groups(entries: list[DigestEntry]) -> list[DigestGroup]:
    """The accounts grouped by reason, the biggest group first, each with what IT can do."""
    by_reason: dict[str, list[DigestEntry]] = defaultdict(list)
    for entry in entries:
        by_reason[entry.mailbox.reason or "protocol_error"].append(entry)
    groups = []
    for reason, members in by_reason.items():
        members.sort(key=lambda e: (e.since, e.mailbox.address))
        groups.append(DigestGroup(reason=reason, words=plain_words(reason),
                                  it_steps=it_steps(reason, {e.mailbox.provider for e in members}),
                                  entries=members))
    groups.sort(key=lambda g: (-len(g.entries), g.reason))
    return groups


def digest_email(user: User, groups: list[DigestGroup]) -> Email:
    """To an IT user: the accounts Problematic for over 24 hours, grouped by reason."""
    total = sum(len(g.entries) for g in groups)
    values = {
        "user": user,
        "groups": groups,
        "total": total,
        "when": lambda moment: when(moment, user),
        "provider_words": PROVIDER_WORDS,
        "short": lambda text: (text or "")[:DETAIL_IN_DIGEST] + ("…" if len(text or "") > DETAIL_IN_DIGEST else ""),
        "accounts_url": portal_link("it.accounts", state="problematic"),
        "settings_url": portal_link("main.account"),
        "portal_url": base_url(),
    }
    plural = "s" if total != 1 else ""
    return Email(subject=f"Daily digest: {total} email account{plural} Problematic for over 24 hours",
                 text=_render("notify/digest.txt", **values), html=_render("notify/digest.html", **values))
