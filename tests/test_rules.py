"""The logging rules: one test per rule of DESIGN.md and per FAQ row of the seed documentation."""

from datetime import datetime

import pytest

from portal.mail.rules import (
    DealMembership,
    Decision,
    Match,
    MessageFacts,
    PrimaryAddress,
    Verdict,
    addresses_of,
    decide,
    message_direction,
)

MAILBOX = "rep@agency.cz"
COLLEAGUE = "colleague@agency.cz"  # another mailbox connected to the CRM
MY_OTHER_MAILBOX = "rep.private@agency.cz"  # another mailbox of the same owner
WHEN = datetime(2025, 3, 10, 12, 0)

ALICE = PrimaryAddress(customer_id=1, address="alice@client.cz", since=None, until=None)
BOB = PrimaryAddress(customer_id=2, address="bob@client.cz", since=None, until=None)

FOLDER_OK = Verdict(
    "folder",
    True,
    "The email's folder (no special use) is synced: only Drafts, Junk and Trash are skipped.",
)
DRAFT_OK = Verdict("draft", True, "The email is not marked as a draft (no IMAP \\Draft flag).")
INTERNAL_OK = Verdict(
    "internal",
    True,
    "No address in From, To or Cc belongs to another connected mailbox "
    "(the synced mailbox rep@agency.cz itself does not count).",
)


def facts(from_=(), to=(), cc=(), *, when=WHEN, flags=(), folder=None) -> MessageFacts:
    return MessageFacts(
        from_=tuple(from_),
        to=tuple(to),
        cc=tuple(cc),
        when=when,
        flags=frozenset(flags),
        folder_special_use=folder,
    )


def run(
    msg: MessageFacts, primary=(ALICE, BOB), deals=(), internal=(MAILBOX, COLLEAGUE), own=None
) -> Decision:
    if own is None:  # the caller that knows no other mailbox of the owner
        return decide(
            msg,
            mailbox_address=MAILBOX,
            internal_addresses=frozenset(internal),
            primary_addresses=primary,
            deals=deals,
        )
    return decide(
        msg,
        mailbox_address=MAILBOX,
        internal_addresses=frozenset(internal),
        primary_addresses=primary,
        deals=deals,
        own_addresses=frozenset(own),
    )


# --- DESIGN rule 3 / FAQ: primary address only ------------------------------------------------


def test_email_from_customer_primary_address_is_logged_incoming():
    decision = run(facts(from_=["alice@client.cz"], to=[MAILBOX]))
    assert decision == Decision(
        logged=True,
        ignore_reason=None,
        matches=(
            Match(
                customer_id=1, field="from", address="alice@client.cz", direction="in", deal_id=None
            ),
        ),
        verdicts=(
            FOLDER_OK,
            DRAFT_OK,
            INTERNAL_OK,
            Verdict(
                "customer", True, "Matched customer #1 by primary address alice@client.cz (From)."
            ),
        ),
    )


def test_email_to_customer_is_logged_outgoing():
    decision = run(facts(from_=[MAILBOX], to=["alice@client.cz"]))
    assert decision.matches == (Match(1, "to", "alice@client.cz", "out", None),)


def test_email_with_customer_in_cc_is_logged_outgoing():
    decision = run(facts(from_=[MAILBOX], to=["someone@else.cz"], cc=["bob@client.cz"]))
    assert decision.matches == (Match(2, "cc", "bob@client.cz", "out", None),)


def test_additional_contact_address_is_never_matched():
    # The caller passes primary address history only; an additional contact's address is
    # simply not in it, so an email to it matches nobody.
    decision = run(facts(from_=["alice.private@gmail.com"], to=[MAILBOX]))
    assert decision == Decision(
        logged=False,
        ignore_reason="no_customer",
        matches=(),
        verdicts=(
            FOLDER_OK,
            DRAFT_OK,
            INTERNAL_OK,
            Verdict(
                "customer",
                False,
                "None of alice.private@gmail.com, rep@agency.cz was a customer's primary address at "
                "the email's time 2025-03-10 12:00 UTC (additional contact addresses never match).",
            ),
        ),
    )


def test_matching_is_case_insensitive():
    decision = run(
        facts(from_=["Alice@Client.CZ"], to=["REP@agency.cz"]),
        primary=[PrimaryAddress(1, "ALICE@client.cz", None, None)],
    )
    assert decision.logged
    assert decision.matches == (Match(1, "from", "alice@client.cz", "in", None),)


def test_primary_address_entries_for_other_addresses_are_ignored():
    others = [
        PrimaryAddress(customer_id=n, address=f"c{n}@x.cz", since=None, until=None)
        for n in range(3, 50)
    ]
    decision = run(facts(from_=["bob@client.cz"]), primary=[*others, BOB])
    assert decision.matches == (Match(2, "from", "bob@client.cz", "in", None),)


# --- DESIGN rule 4 / FAQ: every matched customer, additional customers on a deal ---------------


def test_every_matched_customer_gets_the_email():
    carol = PrimaryAddress(3, "carol@client.cz", None, None)
    decision = run(
        facts(from_=["bob@client.cz"], to=[MAILBOX, "alice@client.cz"], cc=["carol@client.cz"]),
        primary=[ALICE, BOB, carol],
    )
    assert decision.logged
    assert decision.matches == (  # Bob wrote to the rep: incoming for everyone on it
        Match(2, "from", "bob@client.cz", "in", None),
        Match(1, "to", "alice@client.cz", "in", None),
        Match(3, "cc", "carol@client.cz", "in", None),
    )
    assert decision.verdicts[3] == Verdict(
        "customer",
        True,
        "Matched customer #2 by primary address bob@client.cz (From), customer #1 by primary "
        "address alice@client.cz (To), customer #3 by primary address carol@client.cz (Cc).",
    )


def test_the_explanations_name_customers_and_deals_by_the_crms_own_ids():
    deals = [DealMembership(deal_id=10, customer_id=1, role="primary"),
             DealMembership(deal_id=10, customer_id=2, role="additional")]
    decision = decide(facts(from_=[MAILBOX], to=["alice@client.cz"], cc=["bob@client.cz"]),
                      mailbox_address=MAILBOX, internal_addresses=frozenset({MAILBOX}),
                      primary_addresses=(ALICE, BOB), deals=deals,
                      names={"customer": {1: "C-1001", 2: "C-1002"}, "deal": {10: "D-501"}})
    assert decision.verdicts[3].explanation == (
        "Matched customer C-1001 by primary address alice@client.cz (To), customer C-1002 by primary "
        "address bob@client.cz (Cc), additional customer on deal D-501.")


def test_email_to_additional_customer_in_copy_is_logged_on_both():
    deals = [
        DealMembership(deal_id=10, customer_id=1, role="primary"),
        DealMembership(deal_id=10, customer_id=2, role="additional"),
    ]
    decision = run(
        facts(from_=[MAILBOX], to=["alice@client.cz"], cc=["bob@client.cz"]), deals=deals
    )
    assert decision.logged
    assert decision.matches == (
        Match(1, "to", "alice@client.cz", "out", None),
        Match(2, "cc", "bob@client.cz", "out", 10),
    )
    assert decision.verdicts[3].explanation == (
        "Matched customer #1 by primary address alice@client.cz (To), customer #2 by primary "
        "address bob@client.cz (Cc), additional customer on deal #10."
    )


def test_additional_customer_alone_is_logged_without_deal():
    deals = [DealMembership(10, 1, "primary"), DealMembership(10, 2, "additional")]
    decision = run(facts(from_=[MAILBOX], cc=["bob@client.cz"]), deals=deals)
    assert decision.matches == (Match(2, "cc", "bob@client.cz", "out", None),)


def test_additional_customer_of_another_deal_gets_no_deal_id():
    deals = [DealMembership(10, 1, "primary"), DealMembership(11, 2, "additional")]
    decision = run(
        facts(from_=[MAILBOX], to=["alice@client.cz"], cc=["bob@client.cz"]), deals=deals
    )
    assert [m.deal_id for m in decision.matches] == [None, None]


def test_two_additional_customers_of_one_deal_both_get_the_deal():
    deals = [DealMembership(10, 1, "additional"), DealMembership(10, 2, "additional")]
    decision = run(
        facts(from_=[MAILBOX], to=["alice@client.cz"], cc=["bob@client.cz"]), deals=deals
    )
    assert [m.deal_id for m in decision.matches] == [10, 10]


def test_one_match_per_customer_even_with_two_matching_history_entries():
    old = PrimaryAddress(1, "alice@old.cz", since=None, until=datetime(2025, 6, 1))
    new = PrimaryAddress(1, "alice@client.cz", since=datetime(2025, 1, 1), until=None)
    decision = run(
        facts(from_=[MAILBOX], to=["alice@client.cz"], cc=["alice@old.cz"]), primary=[old, new]
    )
    assert decision.matches == (Match(1, "to", "alice@client.cz", "out", None),)


def test_field_is_the_first_of_from_to_cc_holding_the_address():
    decision = run(facts(from_=["alice@client.cz"], to=["alice@client.cz"], cc=["alice@client.cz"]))
    assert decision.matches == (Match(1, "from", "alice@client.cz", "in", None),)


# --- Direction: the email's, seen from the synced mailbox, the same for every customer ----------


def test_customer_in_copy_of_a_customers_email_to_the_rep_sees_it_as_incoming():
    # The issue: Alice writes to the rep, Bob (an additional customer of the deal) in Cc.
    deals = [DealMembership(10, 1, "primary"), DealMembership(10, 2, "additional")]
    decision = run(facts(from_=["alice@client.cz"], to=[MAILBOX], cc=["bob@client.cz"]), deals=deals)
    assert decision.matches == (
        Match(1, "from", "alice@client.cz", "in", None),
        Match(2, "cc", "bob@client.cz", "in", 10),
    )


def test_customer_in_copy_of_someone_elses_email_to_the_rep_sees_it_as_incoming():
    decision = run(facts(from_=["someone@else.cz"], to=[MAILBOX], cc=["alice@client.cz"]))
    assert decision.matches == (Match(1, "cc", "alice@client.cz", "in", None),)


def test_email_from_the_mailbox_is_outgoing_for_every_customer():
    decision = run(facts(from_=["Rep@Agency.CZ"], to=["alice@client.cz"], cc=["bob@client.cz"]))
    assert decision.matches == (
        Match(1, "to", "alice@client.cz", "out", None),
        Match(2, "cc", "bob@client.cz", "out", None),
    )


def test_email_in_the_sent_folder_is_outgoing_even_without_the_mailbox_in_from():
    # Sent from an alias that is not a connected mailbox: the Sent folder says who sent it.
    for folder in ("\\Sent", "\\sent"):
        decision = run(
            facts(from_=["rep.alias@agency.cz"], to=["alice@client.cz"], cc=["bob@client.cz"], folder=folder)
        )
        assert [m.direction for m in decision.matches] == ["out", "out"], folder
    # The same email in INBOX is incoming.
    decision = run(facts(from_=["rep.alias@agency.cz"], to=["alice@client.cz"], cc=["bob@client.cz"]))
    assert [m.direction for m in decision.matches] == ["in", "in"]


def test_email_from_another_mailbox_of_the_same_owner_is_outgoing():
    # Whether such an email is logged is the internal rule's business (every connected
    # mailbox is passed as internal by the sync); the direction is the owner's either way.
    msg = facts(from_=["Rep.Private@agency.cz"], to=[MAILBOX], cc=["alice@client.cz"])
    decision = run(msg, own=(MAILBOX, MY_OTHER_MAILBOX))
    assert decision.matches == (Match(1, "cc", "alice@client.cz", "out", None),)
    assert run(msg).matches == (Match(1, "cc", "alice@client.cz", "in", None),)  # owner unknown
    blocked = run(msg, own=(MAILBOX, MY_OTHER_MAILBOX), internal=(MAILBOX, COLLEAGUE, MY_OTHER_MAILBOX))
    assert blocked.ignore_reason == "internal"


def test_a_colleagues_address_in_from_is_not_the_owners():
    msg = facts(from_=[COLLEAGUE], to=[MAILBOX])
    assert message_direction(msg, {MAILBOX, MY_OTHER_MAILBOX}) == "in"
    assert message_direction(facts(from_=[MY_OTHER_MAILBOX]), {MAILBOX, MY_OTHER_MAILBOX}) == "out"


def test_direction_does_not_change_the_verdicts():
    msg = facts(from_=["alice@client.cz"], to=[MAILBOX], cc=["bob@client.cz"])
    sent = facts(from_=["alice@client.cz"], to=[MAILBOX], cc=["bob@client.cz"], folder="\\Sent")
    assert run(msg).verdicts[1:] == run(sent).verdicts[1:]
    assert run(msg).verdicts[3].explanation == (
        "Matched customer #1 by primary address alice@client.cz (From), "
        "customer #2 by primary address bob@client.cz (Cc)."
    )


# --- DESIGN rule 5 / FAQ: primary address history --------------------------------------------

CHANGED = datetime(2025, 3, 1, 9, 30)
OLD_ADDRESS = PrimaryAddress(1, "alice@old.cz", since=None, until=CHANGED)
NEW_ADDRESS = PrimaryAddress(1, "alice@new.cz", since=CHANGED, until=None)


def test_first_primary_address_matches_any_date():
    for when in (datetime(1999, 1, 1), WHEN, datetime(2040, 1, 1)):
        decision = run(facts(from_=["alice@client.cz"], when=when))
        assert decision.matches == (Match(1, "from", "alice@client.cz", "in", None),)


def test_new_primary_address_matches_only_from_the_moment_it_became_primary():
    before = run(
        facts(from_=["alice@new.cz"], when=datetime(2025, 3, 1, 9, 29)),
        primary=[OLD_ADDRESS, NEW_ADDRESS],
    )
    at = run(facts(from_=["alice@new.cz"], when=CHANGED), primary=[OLD_ADDRESS, NEW_ADDRESS])
    assert before.ignore_reason == "no_customer"
    assert before.verdicts[3] == Verdict(
        "customer",
        False,
        "alice@new.cz was not a customer's primary address at the email's time 2025-03-01 09:29 UTC "
        "(additional contact addresses never match). alice@new.cz was customer #1's primary address only "
        "from 2025-03-01 09:30 UTC, not at the email's time 2025-03-01 09:29 UTC.",
    )
    assert at.matches == (Match(1, "from", "alice@new.cz", "in", None),)


def test_old_primary_address_stops_matching_after_change():
    before = run(
        facts(from_=[MAILBOX], to=["alice@old.cz"], when=datetime(2025, 3, 1, 9, 29)),
        primary=[OLD_ADDRESS, NEW_ADDRESS],
    )
    after = run(
        facts(from_=[MAILBOX], to=["alice@old.cz"], when=CHANGED), primary=[OLD_ADDRESS, NEW_ADDRESS]
    )
    assert before.matches == (Match(1, "to", "alice@old.cz", "out", None),)
    assert after.logged is False
    assert after.ignore_reason == "no_customer"
    assert after.verdicts[3].explanation.endswith(
        "alice@old.cz was customer #1's primary address only until 2025-03-01 09:30 UTC, "
        "not at the email's time 2025-03-01 09:30 UTC."
    )


def test_middle_primary_address_matches_only_inside_its_window():
    middle = PrimaryAddress(
        1, "alice@mid.cz", since=datetime(2025, 1, 1), until=datetime(2025, 2, 1)
    )
    assert run(facts(from_=["alice@mid.cz"], when=datetime(2025, 1, 15)), primary=[middle]).logged
    assert not run(
        facts(from_=["alice@mid.cz"], when=datetime(2024, 12, 31)), primary=[middle]
    ).logged
    assert not run(
        facts(from_=["alice@mid.cz"], when=datetime(2025, 2, 1)), primary=[middle]
    ).logged


# --- DESIGN rule 6 / FAQ: internal mail, drafts, junk, trash ---------------------------------


def test_email_involving_another_connected_mailbox_is_ignored_even_if_disconnected():
    # The caller passes the addresses of every mailbox ever connected, including
    # disconnected and Problematic ones: one of them in Cc is enough.
    decision = run(
        facts(from_=["alice@client.cz"], to=[MAILBOX], cc=["Old.Colleague@Agency.cz"]),
        internal=(MAILBOX, COLLEAGUE, "old.colleague@agency.cz"),
    )
    assert decision == Decision(
        logged=False,
        ignore_reason="internal",
        matches=(),
        verdicts=(
            FOLDER_OK,
            DRAFT_OK,
            Verdict(
                "internal",
                False,
                "old.colleague@agency.cz (Cc) is the address of another mailbox connected to the CRM "
                "(now or in the past); emails involving another connected mailbox are never logged.",
            ),
            Verdict(
                "customer", True, "Matched customer #1 by primary address alice@client.cz (From)."
            ),
        ),
    )


def test_internal_addresses_in_from_and_to_are_all_named():
    decision = run(
        facts(from_=[COLLEAGUE], to=["boss@agency.cz", "alice@client.cz"]),
        internal=(MAILBOX, COLLEAGUE, "boss@agency.cz"),
    )
    assert decision.ignore_reason == "internal"
    assert decision.verdicts[2].explanation.startswith(
        "colleague@agency.cz (From), boss@agency.cz (To) are addresses of another mailbox"
    )


def test_own_mailbox_address_does_not_count_as_internal():
    decision = run(facts(from_=["REP@Agency.cz"], to=["alice@client.cz"]), internal=(MAILBOX,))
    assert decision.logged
    assert decision.verdicts[2] == INTERNAL_OK


def test_draft_flag_ignored():
    decision = run(facts(from_=[MAILBOX], to=["alice@client.cz"], flags=["\\Seen", "\\Draft"]))
    assert decision == Decision(
        logged=False,
        ignore_reason="draft_flag",
        matches=(),
        verdicts=(
            FOLDER_OK,
            Verdict(
                "draft",
                False,
                "The mail server marks the email as a draft (IMAP flag \\Draft); drafts are never logged.",
            ),
            INTERNAL_OK,
            Verdict(
                "customer", True, "Matched customer #1 by primary address alice@client.cz (To)."
            ),
        ),
    )


@pytest.mark.parametrize(
    ("special_use", "reason", "name"),
    [
        ("\\Drafts", "drafts_folder", "Drafts"),
        ("\\Junk", "junk", "Junk"),
        ("\\Trash", "trash", "Trash"),
        ("\\trash", "trash", "Trash"),  # special-use flags are case-insensitive
    ],
)
def test_drafts_junk_trash_folders_ignored(special_use, reason, name):
    decision = run(facts(from_=["alice@client.cz"], to=[MAILBOX], folder=special_use))
    assert decision.logged is False
    assert decision.ignore_reason == reason
    assert decision.matches == ()
    assert decision.verdicts[0] == Verdict(
        "folder",
        False,
        f"The email is in the {name} folder (special use {special_use}); "
        f"emails in Drafts, Junk and Trash are never logged.",
    )


@pytest.mark.parametrize("special_use", ["\\Sent", "\\All", "\\Archive", None])
def test_other_folders_are_synced(special_use):
    decision = run(facts(from_=[MAILBOX], to=["alice@client.cz"], folder=special_use))
    assert decision.logged
    assert decision.verdicts[0].passed


def test_first_failing_rule_is_the_reason_but_every_rule_is_judged():
    decision = run(
        facts(from_=[COLLEAGUE], to=["nobody@else.cz"], flags=["\\Draft"], folder="\\Junk")
    )
    assert decision.ignore_reason == "junk"
    assert [(v.rule, v.passed) for v in decision.verdicts] == [
        ("folder", False),
        ("draft", False),
        ("internal", False),
        ("customer", False),
    ]


def test_no_customer_when_nobody_matches():
    decision = run(facts(from_=["newsletter@shop.cz"], to=[MAILBOX]))
    assert (decision.logged, decision.ignore_reason, decision.matches) == (False, "no_customer", ())


def test_verdict_explanations_present_for_each_rule():
    decision = run(facts(from_=["alice@client.cz"], to=[MAILBOX]))
    assert [v.rule for v in decision.verdicts] == ["folder", "draft", "internal", "customer"]
    assert all(v.explanation.endswith(".") and len(v.explanation) > 20 for v in decision.verdicts)


def test_addresses_of_collects_from_to_cc_lower_cased():
    msg = facts(from_=["A@x.cz"], to=["b@x.cz", "a@x.cz"], cc=["C@X.cz"])
    assert addresses_of(msg) == {"a@x.cz", "b@x.cz", "c@x.cz"}


def test_email_without_addresses_matches_nobody():
    decision = run(facts())
    assert decision.ignore_reason == "no_customer"
    assert decision.verdicts[3] == Verdict(
        "customer", False, "The email has no From, To or Cc address, so it matches no customer."
    )
