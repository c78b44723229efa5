"""Bad input stops before any view: ids no row can have, NUL characters (PostgreSQL refuses
them in text, which would be a 500), and JSON nested too deep (Python's parser would raise
RecursionError). Each is a clear 4xx that changes nothing."""
from flask import Flask, abort, request
from werkzeug.routing import IntegerConverter

MAX_ID = 2**31 - 1  # ids are 32-bit integers
MAX_JSON_DEPTH = 64


class IdConverter(IntegerConverter):
    """`<int:...>` in every route: 1 to MAX_ID only, so a larger number is a plain 404 instead
    of an overflow in the database driver."""

    def __init__(self, url_map, *args, **kwargs):
        kwargs.setdefault("max", MAX_ID)
        super().__init__(url_map, *args, **kwargs)


def init_app(app: Flask) -> None:
    """Before any route is added: the bounded converter replaces Werkzeug's `int`."""
    app.url_map.converters["int"] = IdConverter
    app.before_request(refuse_bad_input)


def refuse_bad_input() -> None:
    if "\x00" in request.path or "\x00" in request.query_string.decode("utf-8", "replace") \
            or "%00" in request.query_string.decode("latin-1").lower():
        abort(400, description="The address holds a NUL character, which no value may contain.")
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        for values in (request.form.listvalues(), ([name] for name in request.form)):
            if any("\x00" in value for group in values for value in group):
                abort(400, description="A field holds a NUL character, which no value may contain.")
        if request.is_json:
            try:
                data = request.get_json(silent=True)
            except RecursionError:
                abort(400, description=f"The JSON is nested deeper than {MAX_JSON_DEPTH} levels.")
            _check_json(data)


def _check_json(data) -> None:
    """Walk the parsed body without recursion: depth and NULs."""
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            abort(400, description=f"The JSON is nested deeper than {MAX_JSON_DEPTH} levels.")
        if isinstance(value, str):
            if "\x00" in value:
                abort(400, description="A JSON string holds a NUL character, which no value may contain.")
        elif isinstance(value, dict):
            pending.extend((key, depth + 1) for key in value)
            pending.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
