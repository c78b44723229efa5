"""MIME parsing: never crashes on real-world broken mail, and decodes what the CRM shows."""

from datetime import datetime
from email.message import EmailMessage

import pytest

from portal.mail.parse import (
    Address,
    ParsedHeaders,
    ParsedMessage,
    content_hash,
    dedupe_key,
    parse_headers,
    parse_message,
)
from tests import corpus
from tests.corpus import own_bytes


# --- never crashes --------------------------------------------------------------------------


def test_own_mail_is_there():
    # tests/mail: the messages tests below assert on, and hostile mail of our own.
    assert len(corpus.own_files()) >= 30


def test_external_corpus_is_present_and_large():
    assert len(corpus.external_files()) > 150


@pytest.mark.parametrize("path", corpus.message_params())
def test_parse_message_never_crashes(path):
    parsed = parse_message(corpus.read(path))
    assert isinstance(parsed, ParsedMessage)
    assert isinstance(parsed.subject, str)
    for field in (parsed.from_, parsed.to, parsed.cc):
        assert isinstance(field, list)
        assert all(isinstance(a, Address) and "@" in a.address for a in field)
        assert all(a.address == a.address.lower() for a in field)
    assert parsed.date is None or parsed.date.tzinfo is None
    assert parsed.text_body is None or isinstance(parsed.text_body, str)
    assert parsed.html_body is None or isinstance(parsed.html_body, str)
    for attachment in parsed.attachments:
        assert set(attachment) == {"filename", "content_type", "size"}
        assert attachment["filename"] and isinstance(attachment["size"], int)
    assert all(isinstance(d, str) for d in parsed.defects)


@pytest.mark.parametrize("path", corpus.message_params())
def test_parse_headers_never_crashes_and_agrees_with_parse_message(path):
    raw = corpus.read(path)
    headers = parse_headers(raw)
    full = parse_message(raw)
    assert isinstance(headers, ParsedHeaders)
    assert isinstance(headers.subject, str)
    assert (
        headers.message_id,
        headers.subject,
        headers.from_,
        headers.to,
        headers.cc,
        headers.date,
    ) == (full.message_id, full.subject, full.from_, full.to, full.cc, full.date)
    assert dedupe_key(headers, raw)


def test_parse_message_takes_given_headers_as_they_are_and_parses_the_body():
    # The sync passes the header extract the rules decided on: its fields and defects are
    # kept, the body, bodies and attachments come from the whole message.
    raw = (
        "From: =?utf-8?q?Ji=C5=99=C3=AD_Nov=C3=A1k?= <jiri@klient.test>\r\nTo: rep@agency.test\r\n"
        "Subject: Nab\xeddka\r\nDate: not a date\r\nMessage-ID: <a@klient.test>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nDobr\u00fd den\r\n"
    ).encode("latin-1", "replace").replace(b"Dobr? den", "Dobrý den".encode())
    extract = parse_headers(raw.split(b"\r\n\r\n")[0] + b"\r\n")
    given = parse_message(raw, headers=extract)
    alone = parse_message(raw)
    for name in ("message_id", "subject", "from_", "to", "cc", "date"):
        assert getattr(given, name) == getattr(alone, name) == getattr(extract, name)
    assert given.from_[0].name == "Jiří Novák" and given.date is None
    assert given.text_body == alone.text_body == "Dobrý den\n"
    assert set(extract.defects) <= set(given.defects) and given.defects == alone.defects
    # Headers the whole-message parse would not see (here: none at all) still come through.
    assert parse_message(b"\xff garbage", headers=extract).from_ == extract.from_


def test_garbage_and_empty_input_do_not_crash():
    assert parse_message(b"").subject == ""
    assert parse_message(b"\xff\xfe\x00 not a message").from_ == []
    assert parse_headers(b"Subject: =?utf-8?b?!!!?= =?no-such-charset?q?x=E9?=\n").subject


def test_absurdly_deep_nesting_keeps_headers():
    body = b"Content-Type: text/plain\n\nhello\n"
    for level in range(2000):
        body = (
            b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (level, level)
            + body
            + b"\n--b%d--\n" % level
        )
    parsed = parse_message(b"From: a@example.com\nSubject: deep\n" + body)
    assert parsed.subject == "deep"
    assert parsed.from_ == [Address("", "a@example.com")]
    assert parsed.defects


# --- tricky messages of our own (tests/mail) -------------------------------------------------


def test_rfc2231_latin1_attachment_filename():
    parsed = parse_message(own_bytes("attachment_with_quoted_filename.eml"))
    assert parsed.attachments == [
        {"filename": "Výhled z balkónu.jpg", "content_type": "image/jpeg", "size": 1480}
    ]
    assert parsed.subject == "Výhled z balkónu"


def test_rfc2231_continued_utf8_attachment_filename():
    # filename*0*, *1*, *2*: the cuts fall inside characters' UTF-8 bytes.
    parsed = parse_message(own_bytes("japanese_attachment_long_name.eml"))
    assert [a["filename"] for a in parsed.attachments] == [
        "プラハ・ヴィノフラディ地区のマンション購入申込書と間取り図.txt"
    ]
    assert parsed.subject == "プラハのマンションについて：購入申込書と間取り図をお送りします"


def test_raw_8bit_attachment_filename():
    parsed = parse_message(own_bytes("attachment_nonascii_filename.eml"))
    assert parsed.attachments == [
        {"filename": "Přihláška.txt", "content_type": "text/plain", "size": 12}
    ]


def test_empty_group_address_yields_no_recipient():
    parsed = parse_message(own_bytes("empty_group_lists.eml"))  # To: undisclosed recipients: ;
    assert parsed.to == []
    assert parsed.from_ == [Address("Marie Svobodová", "marie.svobodova@klient.test")]
    assert parsed.all_addresses() == {"marie.svobodova@klient.test"}


def test_bad_date_is_none_with_a_defect():
    parsed = parse_message(own_bytes("bad_date_header.eml"))  # Date: (folded) {{datum_odeslani}}
    assert parsed.date is None
    assert "Date: cannot parse '{{datum_odeslani}}'" in parsed.defects


def test_missing_message_id_and_date_are_none():
    parsed = parse_message(own_bytes("bz2_attachment.eml"))
    assert parsed.message_id is None
    assert parsed.date is None
    assert parsed.subject == "podklady"
    assert parsed.attachments == [
        {"filename": "vypis_katastr.txt.bz2", "content_type": "application/octet-stream",
         "size": 298}
    ]


def test_windows_1250_subject_split_over_two_encoded_words():
    # š, ž and ť are bytes ISO-8859-2 has elsewhere; the split falls inside "Žižkově".
    parsed = parse_message(own_bytes("windows_1250_subject_split.eml"))
    assert (
        parsed.subject
        == "Automatická odpověď: Jiří, prohlídka bytu na Žižkově je ještě volná"
    )


def test_unknown_charset_label_iso_8859_8_i_decodes_as_hebrew():
    parsed = parse_message(own_bytes("hebrew_iso_8859_8_i_subject.eml"))
    assert parsed.subject == "מענה אוטומטי: Prohlidka bytu 3+kk"


def test_encoded_words_in_display_names():
    parsed = parse_message(own_bytes("encoded_display_names.eml"))
    assert parsed.to == [Address("Jiří Procházka", "jiri.prochazka@klient.test")]
    assert parsed.cc == [Address("Ondřej Marek", "ondrej.marek@klient.test")]


def test_raw_latin1_header_is_readable_and_noted():
    # Bytes of a Windows mailer (š is 0x9A), no charset declared anywhere.
    parsed = parse_message(own_bytes("from_with_raw_8bit_name.eml"))
    assert parsed.from_ == [Address("Tomáš Vávra", "tomas.vavra@klient.test")]
    assert "From: raw 8-bit bytes in no declared charset" in parsed.defects


def test_attached_message_is_one_attachment_named_by_its_filename():
    parsed = parse_message(own_bytes("attachment_message_rfc822.eml"))
    assert [(a["filename"], a["content_type"]) for a in parsed.attachments] == [
        ("Poptavka_Novak.eml", "message/rfc822")
    ]
    assert parsed.text_body == "Posílám přeposlanou poptávku.\n"


def test_attached_message_without_filename_is_message_eml():
    parsed = parse_message(own_bytes("attached_message_without_filename.eml"))
    assert [(a["filename"], a["content_type"]) for a in parsed.attachments] == [
        ("message.eml", "message/rfc822")
    ]


def test_missing_final_boundary_keeps_the_body():
    parsed = parse_message(own_bytes("missing_final_boundary.eml"))
    assert parsed.text_body == "Dobrý den"
    assert "multipart/alternative part: close boundary not found" in parsed.defects


def test_unknown_body_charset_falls_back_and_is_noted():
    parsed = parse_message(own_bytes("unknown_body_charset.eml"))
    assert parsed.text_body.startswith("Dobrý den,\nmám zájem o prohlídku bytu.\n")
    assert "text/plain part: unknown charset 'x-unknown'" in parsed.defects


def test_unquoted_address_junk_is_salvaged():
    parsed = parse_message(own_bytes("multiple_from_unquoted.eml"))
    assert [a.address for a in parsed.from_] == [
        "formular@reality-domov.test", "noreply@reality-domov.test"]


# --- messages built here --------------------------------------------------------------------


def test_czech_subject_and_display_name():
    raw = (
        b"From: =?utf-8?q?Jan_Nov=C3=A1k?= <Jan.Novak@Example.CZ>\r\n"
        b"To: =?iso-8859-2?q?Ji=F8=ED_=A9koda?= <jiri@example.cz>,\r\n"
        b" =?utf-8?q?Nov=C3=A1k=2C_Petr?= <petr@example.cz>\r\n"
        b"Subject: =?utf-8?q?Nab=C3=ADdka_bytu?=\r\n"
        b"Message-ID: <ABC.123@Example.CZ>\r\n"
        b"Date: Mon, 03 Mar 2025 10:00:00 +0100\r\n"
        b"\r\n"
        b"Dobr\xc3\xbd den\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.subject == "Nabídka bytu"
    assert parsed.from_ == [Address("Jan Novák", "jan.novak@example.cz")]
    assert parsed.to == [
        Address("Jiří Škoda", "jiri@example.cz"),
        Address("Novák, Petr", "petr@example.cz"),
    ]
    assert parsed.message_id == "<ABC.123@Example.CZ>"
    assert parsed.date == datetime(2025, 3, 3, 9, 0)  # naive UTC
    assert parsed.text_body == "Dobrý den\n"
    assert parsed.defects == []


def test_czech_subject_written_by_the_standard_library():
    mail = EmailMessage()
    mail["From"] = "Žaneta Dvořáková <zaneta@example.cz>"
    mail["To"] = "info@example.cz"
    mail["Subject"] = "Žluťoučký kůň úpěl ďábelské ódy"
    mail.set_content("Příliš žluťoučký kůň", charset="iso-8859-2")
    parsed = parse_message(mail.as_bytes())
    assert parsed.subject == "Žluťoučký kůň úpěl ďábelské ódy"
    assert parsed.from_ == [Address("Žaneta Dvořáková", "zaneta@example.cz")]
    assert parsed.text_body == "Příliš žluťoučký kůň\n"


def test_multipart_alternative_text_and_html():
    mail = EmailMessage()
    mail["From"] = "a@example.com"
    mail["To"] = "b@example.com"
    mail["Subject"] = "Alt"
    mail.set_content("Plain words")
    mail.add_alternative("<p>HTML <b>words</b></p>", subtype="html")
    parsed = parse_message(mail.as_bytes())
    assert parsed.text_body == "Plain words\n"
    assert parsed.html_body == "<p>HTML <b>words</b></p>\n"
    assert parsed.attachments == []


def test_html_only_message_has_no_text_body():
    mail = EmailMessage()
    mail["Subject"] = "Only HTML"
    mail.set_content("<p>Hi</p>", subtype="html")
    parsed = parse_message(mail.as_bytes())
    assert parsed.text_body is None
    assert parsed.html_body == "<p>Hi</p>\n"


def test_attachment_name_type_and_decoded_size():
    mail = EmailMessage()
    mail["Subject"] = "Smlouva"
    mail.set_content("V příloze.")
    mail.add_attachment(
        b"%PDF-" + bytes(range(256)) * 10,
        maintype="application",
        subtype="pdf",
        filename="Smlouva č. 5.pdf",
    )
    mail.add_attachment(b"\x89PNG....", maintype="image", subtype="png")  # no filename
    parsed = parse_message(mail.as_bytes())
    assert parsed.text_body == "V příloze.\n"
    assert parsed.attachments == [
        {"filename": "Smlouva č. 5.pdf", "content_type": "application/pdf", "size": 5 + 2560},
        {"filename": "attachment.png", "content_type": "image/png", "size": 8},
    ]


def test_attached_message_text_is_not_the_body():
    inner = EmailMessage()
    inner["Subject"] = "Inner"
    inner.set_content("inner text")
    outer = EmailMessage()
    outer["Subject"] = "Fwd: Inner"
    outer.set_content("outer text")
    outer.add_attachment(inner)
    parsed = parse_message(outer.as_bytes())
    assert parsed.text_body == "outer text\n"
    assert [(a["filename"], a["content_type"]) for a in parsed.attachments] == [
        ("message.eml", "message/rfc822")
    ]
    assert parsed.attachments[0]["size"] > len(b"inner text")


def test_parse_headers_reads_a_bare_header_block():
    headers = parse_headers(
        b"From: Sales <SALES@Example.com>\r\nCc: x@example.com, undisclosed-recipients:;\r\n"
        b"Message-ID:   abc@host  \r\nDate: not a date\r\n\r\n"
    )
    assert headers.from_ == [Address("Sales", "sales@example.com")]
    assert headers.cc == [Address("", "x@example.com")]
    assert headers.message_id == "<abc@host>"
    assert headers.date is None
    assert headers.all_addresses() == {"sales@example.com", "x@example.com"}
    assert "Date: cannot parse 'not a date'" in headers.defects


def test_message_id_keeps_the_bracketed_part():
    headers = parse_headers(b"Message-ID: <Part.1@Host> (added by relay)\n\n")
    assert headers.message_id == "<Part.1@Host>"
    assert parse_headers(b"Message-ID:   \n\n").message_id is None


# --- de-duplication -------------------------------------------------------------------------

MESSAGE = (
    b"Date: Mon, 03 Mar 2025 10:00:00 +0100\r\n"
    b"From: Jan <jan@example.cz>\r\n"
    b"To: petr@example.cz\r\n"
    b"Subject: Nabidka\r\n"
    b"\r\n"
    b"Body line 1\r\nBody line 2\r\n"
)


def test_content_hash_ignores_per_mailbox_headers_and_line_endings():
    in_mailbox_a = (
        b"Received: from a by mx1; Mon, 03 Mar 2025 10:00:01 +0100\r\nX-Folder: INBOX\r\n" + MESSAGE
    )
    in_mailbox_b = (
        b"Received: from b by mx9; Mon, 03 Mar 2025 10:00:05 +0100\nX-Spam-Score: 0.1\n"
        + MESSAGE.replace(b"\r\n", b"\n")
    )
    assert content_hash(in_mailbox_a) == content_hash(in_mailbox_b)
    assert content_hash(in_mailbox_a).startswith("sha256:")


def test_content_hash_differs_for_different_bodies_and_headers():
    assert content_hash(MESSAGE) != content_hash(MESSAGE.replace(b"Body line 2", b"Body line 3"))
    assert content_hash(MESSAGE) != content_hash(MESSAGE.replace(b"To: petr@", b"To: pavel@"))


def test_dedupe_key_is_lowercased_message_id_or_content_hash():
    with_id = b"Message-ID: <AbC@Host.CZ>\r\n" + MESSAGE
    assert dedupe_key(parse_headers(with_id), with_id) == "<abc@host.cz>"
    assert dedupe_key(parse_headers(MESSAGE), MESSAGE) == content_hash(MESSAGE)


def test_dedupe_key_of_an_overlong_message_id_fits_the_column():
    raw = b"Message-ID: <" + b"x" * 700 + b"@host>\r\n" + MESSAGE
    key = dedupe_key(parse_headers(raw), raw)
    assert len(key) <= 500
    assert key == dedupe_key(parse_headers(raw.replace(b"Nabidka", b"Other")), raw)
