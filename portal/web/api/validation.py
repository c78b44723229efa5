"""Request-body checks for the API: unknown fields, types, addresses, each a clear 4xx."""
from datetime import datetime

from flask import request

from portal.addresses import normalise_address
from portal.mail import headers
from portal.timeutil import parse_iso
from portal.web.api.errors import ApiError


def json_body() -> dict:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON with 'Content-Type: application/json'.")
    data = request.get_json(silent=True)
    if data is None:
        raise ApiError(400, "invalid_json", "The body is not valid JSON.")
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The body must be a JSON object.")
    return data


def check_fields(data: dict, *, required: set[str], optional: set[str]) -> None:
    unknown = sorted(set(data) - required - optional)
    if unknown:
        raise ApiError(422, "unknown_field", f"Unknown field(s): {', '.join(unknown)}.", fields=unknown)
    missing = sorted(required - set(data))
    if missing:
        raise ApiError(422, "missing_field", f"Missing field(s): {', '.join(missing)}.", fields=missing)


def string(data: dict, field: str, *, max_length: int = 300, allow_empty: bool = False) -> str:
    value = data.get(field)
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", f"'{field}' must be a string.", field=field)
    value = value.strip()
    if not value and not allow_empty:
        raise ApiError(422, "invalid_field", f"'{field}' must not be empty.", field=field)
    if len(value) > max_length:
        raise ApiError(422, "invalid_field", f"'{field}' is longer than {max_length} characters.", field=field)
    return value


def header_safe(value: str, field: str) -> str:
    """A value that may end up in an email header (a customer's name is the To's display
    name): no control character, also none inside an encoded word (=?...?=) once decoded
    (security review, item 3). Refused here so that what is stored is clean."""
    found = headers.control_characters(value)
    if found:
        literal = any(chr(int(code[2:], 16)) in value for code in found)
        where = "" if literal else " once its encoded words (=?...?=) are decoded"
        raise ApiError(422, "invalid_field",
                       f"'{field}' holds {headers.describe(found)}{where}. Names are written into the "
                       "headers of emails, where that could add headers of its own: send it as plain text "
                       "on one line.", field=field)
    return value


def header_string(data: dict, field: str, **kwargs) -> str:
    """string() that may go into an email header: see header_safe()."""
    return header_safe(string(data, field, **kwargs), field)


def address(value, field: str) -> str:
    try:
        normalised = normalise_address(value)
    except ValueError as exc:
        raise ApiError(422, "invalid_email", f"'{field}': {exc}.", field=field) from None
    found = headers.control_characters(normalised)
    if found:
        # "=?utf-8?q?a=0d=0a?=@x.test" is a valid address, and the email package decodes it.
        raise ApiError(422, "invalid_email",
                       f"'{field}': {value!r} holds {headers.describe(found)} once its encoded words (=?...?=) "
                       "are decoded; it cannot be written into an email header.", field=field)
    return normalised


def timestamp(value, field: str) -> datetime:
    try:
        return parse_iso(value)
    except (TypeError, ValueError):
        raise ApiError(422, "invalid_field", f"'{field}' must be an ISO 8601 timestamp, e.g. 2026-11-27T10:00:00Z.",
                       field=field) from None


def external_id(value: str) -> str:
    if not value or len(value) > 200 or not value.isprintable():
        raise ApiError(422, "invalid_external_id", "The external id must be 1 to 200 printable characters.")
    return value


def number_arg(name: str, default: int, low: int, high: int) -> int:
    """A whole number from the query string within [low, high]; anything else is a 400 that says so."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"'{name}' must be a whole number.") from None
    if not low <= value <= high:
        raise ApiError(400, "invalid_parameter", f"'{name}' must be between {low} and {high}.")
    return value
