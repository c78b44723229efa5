"""Validating and normalising email addresses typed by people or sent by the CRM."""
from email_validator import EmailNotValidError, validate_email


def normalise_address(text: str) -> str:
    """The address lower-cased, or ValueError with a sentence saying what is wrong.

    Matching is case-insensitive (DESIGN rule 3), so addresses are stored lower-cased.
    The reserved `.test` domain is accepted: demos and tests use it.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("an email address is required")
    try:
        result = validate_email(text.strip(), check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise ValueError(f"{text!r} is not a valid email address: {exc}") from None
    return result.normalized.lower()
