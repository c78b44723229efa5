"""Which emails are logged on which customers: the rules of DESIGN.md, as plain functions.

No I/O: the caller gathers the facts (headers, IMAP flags and folder, the addresses of
every mailbox ever connected, the addresses of the synced mailbox's owner, the customers'
primary address history, deal memberships) and gets back a ``Decision``. The same
function runs in the sync and on the support page "why was / wasn't this email logged?",
so every rule's verdict is computed and explained even when an earlier rule already
decided.

Direction belongs to the email, seen from the synced mailbox, not to each customer: "out"
when the mailbox's owner sent it (one of their mailbox addresses is in From, or it sits
in the mailbox's Sent folder), else "in"; every customer it is logged on gets the same.
A customer in copy of a customer's email to the rep sees it as incoming too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

_FIELDS = ("from", "to", "cc")

# IMAP special-use folders (RFC 6154) whose messages are never logged, and why.
_IGNORED_FOLDERS = {"\\drafts": "drafts_folder", "\\junk": "junk", "\\trash": "trash"}
_FOLDER_WORDS = {"drafts_folder": "Drafts", "junk": "Junk", "trash": "Trash"}
_SENT = "\\sent"  # special use of the folder holding what the mailbox sent


@dataclass(frozen=True)
class PrimaryAddress:
    """One entry of a customer's primary address history."""

    customer_id: int
    address: str  # lower-cased
    since: datetime | None  # None: the first address, matches any date
    until: datetime | None  # None: still the primary address


@dataclass(frozen=True)
class DealMembership:
    deal_id: int
    customer_id: int
    role: str  # "primary" | "additional"


@dataclass(frozen=True)
class MessageFacts:
    """What the sync knows of a message from its headers and IMAP."""

    from_: tuple[str, ...]  # lower-cased addresses
    to: tuple[str, ...]
    cc: tuple[str, ...]
    when: datetime  # naive UTC INTERNALDATE; the primary address history is read at this time
    flags: frozenset[str]  # IMAP flags, e.g. "\\Draft", "\\Seen"
    folder_special_use: str | None  # "\\Drafts", "\\Junk", "\\Trash", "\\Sent", "\\All" or None


@dataclass(frozen=True)
class Match:
    customer_id: int
    field: str  # "from" | "to" | "cc": the first of these holding the customer's address
    address: str
    direction: str  # the email's, the same in every Match of a Decision: see message_direction
    deal_id: int | None  # set for an additional customer of a deal another matched customer is on


@dataclass(frozen=True)
class Verdict:
    """One line of the "why was / wasn't this email logged?" explanation."""

    rule: str  # "folder" | "draft" | "internal" | "customer"
    passed: bool
    explanation: str


@dataclass(frozen=True)
class Decision:
    logged: bool
    # None when logged, else the first failing rule's reason: "drafts_folder",
    # "draft_flag", "junk", "trash", "internal" or "no_customer".
    ignore_reason: str | None
    matches: tuple[Match, ...]  # customers to log it on, in address order; empty unless logged
    verdicts: tuple[Verdict, ...]  # folder, draft, internal, customer: always all four


def addresses_of(msg: MessageFacts) -> set[str]:
    """Every address in From, To and Cc, lower-cased."""
    return {address for _, address in _addresses_by_field(msg)}


def message_direction(msg: MessageFacts, own_addresses: Iterable[str]) -> str:
    """The email's direction, seen from the synced mailbox: "out" when its owner sent it (one
    of ``own_addresses`` is in From, or the email is in the mailbox's Sent folder, special
    use \\Sent), else "in". The same for every customer the email is logged on."""
    if (msg.folder_special_use or "").lower() == _SENT:
        return "out"
    own = _lowered(frozenset(own_addresses))
    if any(address.strip().lower() in own for address in msg.from_):
        return "out"
    return "in"


def decide(
    msg: MessageFacts,
    *,
    mailbox_address: str,
    internal_addresses: frozenset[str],
    primary_addresses: Iterable[PrimaryAddress],
    deals: Iterable[DealMembership] = (),
    own_addresses: Iterable[str] = (),
    names: Mapping[str, Mapping[int, str]] | None = None,
) -> Decision:
    """Apply the rules to one message: folder, draft flag, internal, customer, in that order.

    ``internal_addresses``: the addresses of every mailbox ever connected by anyone,
    including disconnected and Problematic ones (it may include ``mailbox_address``).
    ``primary_addresses``: primary address history entries; entries for addresses not
    in the message are ignored. Additional contact addresses must not be passed: they
    never match.
    ``own_addresses``: the addresses of the other mailboxes of the synced mailbox's owner
    (any state); ``mailbox_address`` always counts. They decide only the direction, which
    every Match gets (``message_direction``); the internal rule is not changed by them.
    ``names``: how the explanations name customers and deals, ``{"customer": {id: "C-1001"},
    "deal": {id: "D-501"}}`` (the CRM's external ids); else by their ids.
    """
    direction = message_direction(msg, frozenset({mailbox_address, *own_addresses}))
    folder_reason, folder_verdict = _folder_rule(msg)
    draft_reason, draft_verdict = _draft_rule(msg)
    internal_reason, internal_verdict = _internal_rule(msg, mailbox_address, internal_addresses)
    matches, customer_verdict = _customer_rule(msg, list(primary_addresses), list(deals), direction, names or {})
    customer_reason = None if matches else "no_customer"

    reasons = (folder_reason, draft_reason, internal_reason, customer_reason)
    ignore_reason = next((reason for reason in reasons if reason), None)
    logged = ignore_reason is None
    return Decision(
        logged=logged,
        ignore_reason=ignore_reason,
        matches=matches if logged else (),
        verdicts=(folder_verdict, draft_verdict, internal_verdict, customer_verdict),
    )


def reason_without_customer(flags: frozenset[str], addresses: set[str], mailbox_address: str,
                            internal_addresses: frozenset[str]) -> str:
    """The reason ``decide`` gives a message of a synced folder that names no customer, from
    its flags and (a superset of) its addresses: the same rules in the same order, without
    the explanations, because the sync asks it of most of a mailbox's mail."""
    if any(flag.lower() == "\\draft" for flag in flags):
        return "draft_flag"
    if (addresses & internal_addresses) - {mailbox_address.lower()}:
        return "internal"
    return "no_customer"


def _folder_rule(msg: MessageFacts) -> tuple[str | None, Verdict]:
    special_use = (msg.folder_special_use or "").lower()
    reason = _IGNORED_FOLDERS.get(special_use)
    if reason:
        name = _FOLDER_WORDS[reason]
        return reason, Verdict(
            "folder",
            False,
            f"The email is in the {name} folder (special use {msg.folder_special_use}); "
            f"emails in Drafts, Junk and Trash are never logged.",
        )
    where = f"special use {msg.folder_special_use}" if msg.folder_special_use else "no special use"
    return None, Verdict(
        "folder",
        True,
        f"The email's folder ({where}) is synced: only Drafts, Junk and Trash are skipped.",
    )


def _draft_rule(msg: MessageFacts) -> tuple[str | None, Verdict]:
    if any(flag.lower() == "\\draft" for flag in msg.flags):
        return "draft_flag", Verdict(
            "draft",
            False,
            "The mail server marks the email as a draft (IMAP flag \\Draft); "
            "drafts are never logged.",
        )
    return None, Verdict(
        "draft",
        True,
        "The email is not marked as a draft (no IMAP \\Draft flag).",
    )


def _internal_rule(
    msg: MessageFacts, mailbox_address: str, internal_addresses: Iterable[str]
) -> tuple[str | None, Verdict]:
    internal = _lowered(frozenset(internal_addresses))
    own = mailbox_address.lower()
    # The synced mailbox does not count against itself: its address is in all its email.
    hits = [
        f"{address} ({field.capitalize()})"
        for field, address in _addresses_by_field(msg)
        if address != own and address in internal
    ]
    if hits:
        return "internal", Verdict(
            "internal",
            False,
            f"{', '.join(hits)} {'is the address' if len(hits) == 1 else 'are addresses'} "
            f"of another mailbox connected to the CRM (now or in the past); emails involving "
            f"another connected mailbox are never logged.",
        )
    return None, Verdict(
        "internal",
        True,
        f"No address in From, To or Cc belongs to another connected mailbox "
        f"(the synced mailbox {own} itself does not count).",
    )


def _named(kind: str, key: int, names: Mapping[str, Mapping[int, str]]) -> str:
    """'customer C-1001' (its external id) where the caller knows it, else 'customer #1'."""
    name = names.get(kind, {}).get(key)
    return f"{kind} {name}" if name else f"{kind} #{key}"


def _customer_rule(
    msg: MessageFacts, history: list[PrimaryAddress], deals: list[DealMembership], direction: str,
    names: Mapping[str, Mapping[int, str]],
) -> tuple[tuple[Match, ...], Verdict]:
    """One Match per customer whose primary address (at the message's time) is in the message,
    each with the email's ``direction``.

    Matches are ordered as the addresses appear (From, then To, then Cc).
    """
    positions: dict[str, tuple[int, str]] = {}  # address -> (first position, its field)
    for position, (field, address) in enumerate(_addresses_by_field(msg)):
        positions.setdefault(address, (position, field))

    best: dict[int, tuple[int, str, str]] = {}  # customer -> (position, field, address)
    out_of_window: list[PrimaryAddress] = []
    for entry in history:
        address = entry.address.lower()
        if address not in positions:
            continue
        if not _primary_at(entry, msg.when):
            out_of_window.append(entry)
            continue
        position, field = positions[address]
        if entry.customer_id not in best or position < best[entry.customer_id][0]:
            best[entry.customer_id] = (position, field, address)

    matched = set(best)
    deal_of = _deals_in_copy(matched, deals)
    ordered = sorted(best.items(), key=lambda item: (item[1][0], item[0]))
    matches = tuple(
        Match(
            customer_id=customer_id,
            field=field,
            address=address,
            direction=direction,
            deal_id=deal_of.get(customer_id),
        )
        for customer_id, (_, field, address) in ordered
    )

    notes = [
        f"{entry.address} was {_named('customer', entry.customer_id, names)}'s primary address only "
        f"{_window(entry)}, not at the email's time {_fmt(msg.when)}."
        for entry in out_of_window
        if entry.customer_id not in matched
    ]
    if matches:
        found = ", ".join(
            [
                f"{_named('customer', m.customer_id, names)} by primary address {m.address} ({m.field.capitalize()})"
                + (f", additional customer on {_named('deal', m.deal_id, names)}" if m.deal_id is not None else "")
                for m in matches
            ]
        )
        text = f"Matched {found}."
    else:
        checked = sorted(positions)
        if not checked:
            text = "The email has no From, To or Cc address, so it matches no customer."
        else:
            who = (
                f"{checked[0]} was not"
                if len(checked) == 1
                else f"None of {', '.join(checked)} was"
            )
            text = (
                f"{who} a customer's primary address at the email's time {_fmt(msg.when)} "
                f"(additional contact addresses never match)."
            )
    return matches, Verdict("customer", bool(matches), " ".join([text, *notes]))


@lru_cache(maxsize=16)
def _lowered(addresses: frozenset[str]) -> frozenset[str]:
    """The addresses lower-cased. Cached: the sync passes one set (of every mailbox ever
    connected) for each of thousands of messages, and frozenset() of a frozenset is itself."""
    return frozenset(address.lower() for address in addresses)


def _primary_at(entry: PrimaryAddress, when: datetime) -> bool:
    """Was this the customer's primary address at ``when``? since <= when < until."""
    return (entry.since is None or entry.since <= when) and (
        entry.until is None or when < entry.until
    )


def _deals_in_copy(matched: set[int], deals: list[DealMembership]) -> dict[int, int]:
    """customer -> deal, for each matched customer who is an additional customer on a deal
    another member of which (any role) is matched too; the lowest deal id when several."""
    members: dict[int, set[int]] = {}
    for membership in deals:
        members.setdefault(membership.deal_id, set()).add(membership.customer_id)
    found: dict[int, int] = {}
    for membership in sorted(deals, key=lambda m: m.deal_id):
        customer = membership.customer_id
        if (
            membership.role == "additional"
            and customer in matched
            and customer not in found
            and (members[membership.deal_id] - {customer}) & matched
        ):
            found[customer] = membership.deal_id
    return found


def _addresses_by_field(msg: MessageFacts) -> list[tuple[str, str]]:
    """(field, lower-cased address) for From, To, Cc, in order."""
    return [
        (field, address.strip().lower())
        for field, addresses in zip(_FIELDS, (msg.from_, msg.to, msg.cc), strict=True)
        for address in addresses
        if address.strip()
    ]


def _window(entry: PrimaryAddress) -> str:
    if entry.since is not None and entry.until is not None:
        return f"from {_fmt(entry.since)} until {_fmt(entry.until)}"
    if entry.since is not None:
        return f"from {_fmt(entry.since)}"
    return f"until {_fmt(entry.until)}"


def _fmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
