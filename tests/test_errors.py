"""Failure classification: real provider words and exception types -> DESIGN.md reasons."""

import errno
import imaplib
import smtplib
import socket
import ssl

import pytest
from authlib.integrations.base_client import OAuthError
from imapclient.exceptions import LoginError

from portal.mail.errors import (
    REFUSAL_REASONS,
    TRANSIENT_REASONS,
    Classified,
    classify_exception,
    classify_text,
    fix_steps,
    plain_words,
)

PROVIDER_WORDS = [
    # Google IMAP / SMTP / OAuth
    ("[AUTHENTICATIONFAILED] Invalid credentials (Failure)", "auth_failed"),
    (
        "[ALERT] Application-specific password required: https://support.google.com/accounts/answer/185833 (Failure)",
        "imap_disabled",
    ),
    (
        "[ALERT] Please log in via your web browser: https://support.google.com/mail/accounts/answer/78754 (Failure)",
        "imap_disabled",
    ),
    (
        "[ALERT] Web login required: https://support.google.com/mail/answer/78754 (Failure)",
        "imap_disabled",
    ),
    (
        (
            "[ALERT] IMAP access is disabled for your domain. Please contact your domain administrator for questions "
            "about this feature. (Failure)"
        ),
        "imap_disabled",
    ),
    (
        (
            "Your account is not enabled for IMAP use. Please visit your Gmail settings page and enable your account "
            "for IMAP access. (Failure)"
        ),
        "imap_disabled",
    ),
    ("[ALERT] Too many simultaneous connections. (Failure)", "throttled"),
    ("[OVERQUOTA] Account exceeded command or bandwidth limits. (Failure)", "throttled"),
    ("[THROTTLED] System busy, try again later", "throttled"),
    (
        "5.7.8 Username and Password not accepted. For more information, go to https://support.google.com/mail/?p=BadCredentials",
        "auth_failed",
    ),
    ("invalid_grant: Token has been expired or revoked.", "token_revoked"),
    ("invalid_grant: Bad Request", "token_revoked"),
    ("invalid_client: The OAuth client was not found.", "app_credentials_invalid"),
    ("insufficient_scope: Request had insufficient authentication scopes.", "consent_missing"),
    (
        "admin_policy_enforced: Access blocked: your administrator has not allowed this app",
        "consent_missing",
    ),
    # Microsoft 365 / Outlook IMAP, SMTP and Azure AD
    ("AUTHENTICATE failed.", "auth_failed"),
    ("LOGIN failed.", "auth_failed"),
    ("User is authenticated but not connected.", "imap_disabled"),
    ("Request is throttled. Suggested Backoff Time: 299499 milliseconds", "throttled"),
    (
        "invalid_grant: AADSTS70008: The provided authorization code or refresh token has expired due to inactivity.",
        "token_revoked",
    ),
    (
        (
            "invalid_grant: AADSTS50173: The provided grant has expired due to it being revoked, a fresh auth token is "
            "needed. The user might have changed or reset their password."
        ),
        "token_revoked",
    ),
    (
        "invalid_grant: AADSTS700082: The refresh token has expired due to inactivity.",
        "token_revoked",
    ),
    (
        (
            "invalid_grant: AADSTS70043: The refresh token has expired or is invalid due to sign-in frequency checks by "
            "conditional access."
        ),
        "token_revoked",
    ),
    (
        (
            "invalid_grant: AADSTS700084: The refresh token was issued to a single page app (SPA), and therefore has a "
            "fixed, limited lifetime"
        ),
        "token_revoked",
    ),
    (
        (
            "invalid_grant: AADSTS50078: Presented multi-factor authentication has expired due to policies configured by "
            "your administrator"
        ),
        "token_revoked",
    ),
    (
        (
            "invalid_grant: AADSTS50076: Due to a configuration change made by your administrator, or because you moved "
            "to a new location, you must use multi-factor authentication"
        ),
        "token_revoked",
    ),
    (
        (
            "invalid_grant: AADSTS65001: The user or administrator has not consented to use the application with ID "
            "'0d9f...' named 'Realpad EIS'."
        ),
        "consent_missing",
    ),
    (
        "invalid_client: AADSTS7000222: The provided client secret keys for app '0d9f...' are expired.",
        "app_credentials_invalid",
    ),
    ("invalid_client: AADSTS7000215: Invalid client secret provided.", "app_credentials_invalid"),
    ("The requested scope(s) were not granted by the user.", "consent_missing"),
    (
        (
            "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. "
            "Visit https://aka.ms/smtp_auth_disabled for more information."
        ),
        "imap_disabled",
    ),
    ("5.7.3 Authentication unsuccessful [BN0PR04CA0149.namprd04.prod.outlook.com]", "auth_failed"),
    # Dovecot and other IMAP servers
    ("[AUTHENTICATIONFAILED] Authentication failed.", "auth_failed"),
    (
        "[UNAVAILABLE] Temporary authentication failure. [mail1:2025-03-10 12:00:00]",
        "mailbox_unavailable",
    ),
    ("[NONEXISTENT] Unknown Mailbox: Archive/2024 (0.001 + 0.000 secs).", "mailbox_unavailable"),
    (
        "Maximum number of connections from user+IP exceeded (mail_max_userip_connections=10)",
        "throttled",
    ),
    ("[LIMIT] Too many messages in the search result", "throttled"),
    ("[AUTHENTICATIONFAILED] LOGIN Invalid credentials", "auth_failed"),
    # Nothing we know
    ("BAD Command Argument Error. 12", "protocol_error"),
    ("", "protocol_error"),
]


@pytest.mark.parametrize(("text", "reason"), PROVIDER_WORDS)
def test_provider_words(text, reason):
    classified = classify_text(text)
    assert classified.reason == reason
    assert classified.refusal is (reason in REFUSAL_REASONS)
    assert classified.detail == text


def test_reason_sets_cover_the_design_table():
    assert REFUSAL_REASONS == {
        "auth_failed",
        "token_revoked",
        "consent_missing",
        "imap_disabled",
        "app_credentials_invalid",
    }
    assert TRANSIENT_REASONS == {
        "server_unreachable",
        "tls_error",
        "throttled",
        "mailbox_unavailable",
        "protocol_error",
    }


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Request is throttled. Suggested Backoff Time: 1234 ms", 1.234),
        ("Request is throttled. Suggested Backoff Time: 299499 milliseconds", 299.499),
        ("429 Too Many Requests. Retry-After: 30", 30.0),
        ("[THROTTLED] please try again in 5 minutes", 300.0),
        ("[THROTTLED] System busy", None),
        ("[AUTHENTICATIONFAILED] Invalid credentials (Failure)", None),
    ],
)
def test_retry_after(text, seconds):
    assert classify_text(text).retry_after == seconds


def test_detail_is_kept_verbatim_but_truncated():
    text = "invalid_grant: " + "x" * 5000
    classified = classify_text(text)
    assert classified == Classified("token_revoked", True, text[:2000], None)


EXCEPTIONS = [
    (TimeoutError("timed out"), "server_unreachable", "timed out"),
    (TimeoutError(), "server_unreachable", "TimeoutError"),
    (
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        "server_unreachable",
        "[Errno 111] Connection refused",
    ),
    (
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        "server_unreachable",
        "[Errno 104] Connection reset by peer",
    ),
    (
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        "server_unreachable",
        "[Errno -2] Name or service not known",
    ),
    (
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        "server_unreachable",
        "[Errno 101] Network is unreachable",
    ),
    (EOFError(), "server_unreachable", "EOFError"),
    (imaplib.IMAP4.abort("socket error: EOF"), "server_unreachable", "socket error: EOF"),
    (
        imaplib.IMAP4.abort("* BYE [UNAVAILABLE] Server shutting down"),
        "mailbox_unavailable",
        "* BYE [UNAVAILABLE] Server shutting down",
    ),
    (
        ssl.SSLCertVerificationError(
            1,
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
            "certificate (_ssl.c:1006)",
        ),
        "tls_error",
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)",
    ),
    (
        ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"),
        "tls_error",
        "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)",
    ),
    # imapclient passes on str() of imaplib's error, which shows the server's bytes as b'...'
    (
        LoginError("b'[AUTHENTICATIONFAILED] Invalid credentials (Failure)'"),
        "auth_failed",
        "[AUTHENTICATIONFAILED] Invalid credentials (Failure)",
    ),
    (
        imaplib.IMAP4.error(
            b"[ALERT] Application-specific password required: "
            b"https://support.google.com/accounts/answer/185833 (Failure)"
        ),
        "imap_disabled",
        "[ALERT] Application-specific password required: https://support.google.com/accounts/answer/185833 (Failure)",
    ),
    (
        imaplib.IMAP4.error(
            "command SELECT illegal in state AUTH, only allowed in states SELECTED"
        ),
        "protocol_error",
        "command SELECT illegal in state AUTH, only allowed in states SELECTED",
    ),
    (
        smtplib.SMTPAuthenticationError(535, b"5.7.8 Username and Password not accepted."),
        "auth_failed",
        "535 5.7.8 Username and Password not accepted.",
    ),
    (
        smtplib.SMTPAuthenticationError(535, b"5.7.0 Something else entirely"),
        "auth_failed",
        "535 5.7.0 Something else entirely",
    ),
    (
        smtplib.SMTPAuthenticationError(
            535,
            b"5.7.139 Authentication unsuccessful, SmtpClientAuthentication is "
            b"disabled for the Tenant.",
        ),
        "imap_disabled",
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
    ),
    (
        smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
        "server_unreachable",
        "Connection unexpectedly closed",
    ),
    (
        smtplib.SMTPConnectError(554, b"5.7.1 Service unavailable"),
        "server_unreachable",
        "554 5.7.1 Service unavailable",
    ),
    (
        smtplib.SMTPConnectError(421, b"4.7.0 Too many connections, try again later"),
        "throttled",
        "421 4.7.0 Too many connections, try again later",
    ),
    (
        OAuthError(
            error="invalid_grant", description="AADSTS70008: The refresh token has expired."
        ),
        "token_revoked",
        "invalid_grant: AADSTS70008: The refresh token has expired.",
    ),
    (
        OAuthError(
            error="invalid_client",
            description="AADSTS7000222: The provided client secret keys are expired.",
        ),
        "app_credentials_invalid",
        "invalid_client: AADSTS7000222: The provided client secret keys are expired.",
    ),
    (KeyError("uid"), "protocol_error", "'uid'"),
]


@pytest.mark.parametrize(
    ("exc", "reason", "detail"),
    EXCEPTIONS,
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_exception_types(exc, reason, detail):
    classified = classify_exception(exc)
    assert (classified.reason, classified.detail) == (reason, detail)
    assert classified.refusal is (reason in REFUSAL_REASONS)


def test_wrapped_network_error_is_classified_by_its_cause():
    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        except ConnectionRefusedError as cause:
            raise RuntimeError("token endpoint request failed") from cause
    except RuntimeError as exc:
        classified = classify_exception(exc)
    assert classified == Classified(
        "server_unreachable", False, "token endpoint request failed", None
    )


def test_throttled_exception_keeps_the_suggested_wait():
    exc = imaplib.IMAP4.error(b"Request is throttled. Suggested Backoff Time: 1500 milliseconds")
    assert classify_exception(exc) == Classified(
        "throttled", False, "Request is throttled. Suggested Backoff Time: 1500 milliseconds", 1.5
    )


@pytest.mark.parametrize("reason", sorted(REFUSAL_REASONS | TRANSIENT_REASONS))
def test_every_reason_has_plain_words_and_fix_steps(reason):
    assert plain_words(reason).endswith(".")
    steps = fix_steps(reason)
    assert steps and all(isinstance(step, str) and step for step in steps)


def test_plain_words_for_a_wrong_password():
    assert plain_words("auth_failed") == "The mail server rejected the password or sign-in."


def test_imap_disabled_steps_send_it_to_allow_third_party_clients():
    steps = " ".join(fix_steps("imap_disabled"))
    assert "https://support.google.com/a/answer/105694" in steps
    assert (
        "https://support.microsoft.com/en-us/office/pop-imap-and-smtp-settings-for-outlook-com-"
        "d088b986-291d-42b8-9564-9c414e2aa040"
    ) in steps
    assert "reconnect" in steps


def test_consent_missing_steps_list_the_microsoft_permissions():
    steps = " ".join(fix_steps("consent_missing"))
    for permission in (
        "IMAP.AccessAsUser.All",
        "SMTP.Send",
        "openid",
        "email",
        "profile",
        "offline_access",
    ):
        assert permission in steps


def test_refusals_are_fixed_by_reconnecting():
    for reason in ("auth_failed", "token_revoked", "consent_missing", "imap_disabled"):
        assert any(
            "delete the connection and connect the same account again" in s
            for s in fix_steps(reason)
        )


def test_steps_name_this_portals_page_and_the_reconnect_button_beside_them():
    for reason in ("auth_failed", "token_revoked", "imap_disabled"):
        steps = " ".join(fix_steps(reason))
        assert "press Reconnect, beside these steps on My email accounts" in steps
        assert "Settings -> User" not in steps


def test_support_is_sent_to_the_configured_contact_or_the_crm_administrator():
    assert any("report it to your CRM administrator" in s for s in fix_steps("protocol_error"))
    assert any("report it to help@crm-vendor.test" in s
               for s in fix_steps("protocol_error", support_contact="help@crm-vendor.test"))
    assert any("report it to https://help.crm-vendor.test/eis" in s
               for s in fix_steps("auth_failed", support_contact="https://help.crm-vendor.test/eis"))
    assert not any("realpad" in s for r in ("auth_failed", "protocol_error") for s in fix_steps(r))


def test_unknown_reason_gets_generic_words():
    assert (
        plain_words("no_such_reason")
        == "Something unexpected went wrong while talking to the mail server."
    )
    assert fix_steps("no_such_reason") == fix_steps("protocol_error")
