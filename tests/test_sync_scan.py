"""The sync's cheap pre-scan and its UID sets, alone (no server, no database).

The pre-scan decides which messages are parsed in full: it must find every address the
parser finds in From/To/Cc, or flag the message as unusual so it is parsed anyway."""
import pytest

from portal.mail import parse
from portal.mail.imap import uid_set
from portal.mail.scan import scan_addresses as _scan
from tests import corpus


@pytest.mark.parametrize("path", corpus.message_params())
def test_the_scan_sees_every_address_the_parser_sees(path):
    header = parse.split_header_block(corpus.read(path))[0]
    tokens, unusual = _scan(header)
    if not unusual:
        assert parse.parse_headers(header).all_addresses() <= tokens


def test_the_scan_leaves_message_ids_out_even_folded():
    header = (b"Message-ID: <4f1.x@mailer.klient.test>\r\nFrom: =?utf-8?q?Ji=C5=99=C3=AD?= <jiri@klient.test>\r\n"
              b"To: rep@agency.test,\r\n\tpetra@klient.test\r\nmessage-id:\r\n <folded@mailer.test>\r\n"
              b"Subject: viz nabidka@klient.test\r\n\r\n")
    assert _scan(header) == ({"jiri@klient.test", "rep@agency.test", "petra@klient.test", "nabidka@klient.test"},
                             False)


@pytest.mark.parametrize("header", [
    b'From: "john doe"@klient.test\r\n',  # quoted local part
    b"To: guest@localhost\r\n",  # no dot in the domain
    b"To: jdoe@test   . example\r\n",  # obsolete spaced syntax
    b"To: <@relay.test:mary@klient.test>\r\n",  # obsolete route
    b"From: =?bogus-16?q?jiri=40klient.test?= <x@y.test>\r\n",  # an @ encoded in an unknown charset
    b"From: =?utf-8?b?!!notbase64?= <x@y.test>\r\n",  # an encoded word that does not decode
    b"From: \xb4google@klient.test\r\n",  # 8-bit, not UTF-8
])
def test_the_scan_hands_what_it_cannot_see_through_to_the_parser(header):
    assert _scan(header)[1] is True


def test_the_scan_decodes_encoded_words_that_hold_a_whole_address():
    """Some mailers write "Name <address>" as one encoded word: the scan reads inside it."""
    header = (b"From: =?utf-8?b?SmFuYSBOb3bDoWtvdsOhIDxqYW5hLm5vdmFrb3ZhQGtsaWVudC50ZXN0Pg==?=\r\n"
              b"To: =?iso-8859-2?q?prodej=40reality-domov.test?=\r\n")
    assert _scan(header) == ({"jana.novakova@klient.test", "prodej@reality-domov.test"}, False)
    assert _scan(b"From: =?utf-8?q?jiri=40klient.test?= <x@y.test>\r\n") == (
        {"jiri@klient.test", "x@y.test"}, False)  # more than the parser sees, never less
    assert _scan(b"From: =?utf-16?b?AGoAYQBuAGEAQAB4AC4AdABlAHMAdA==?=\r\n")[1] is True  # not ASCII-compatible


def test_uid_sets_write_runs_as_ranges():
    assert uid_set([4, 7, 8, 9, 12]) == "4,7:9,12"
    assert uid_set([12, 9, 8, 7, 4, 8]) == "4,7:9,12"  # order and repeats do not matter
    assert uid_set(list(range(1, 1001))) == "1:1000"
    assert uid_set([5]) == "5" and uid_set([5, 7]) == "5,7" and uid_set([]) == ""
