"""Secrets at rest (mailbox passwords, OAuth tokens), encrypted with MultiFernet.

EIS_ENCRYPTION_KEYS is a comma-separated list of Fernet keys: the first encrypts, all
decrypt, so operators rotate by putting a new key first and running `eis rotate-keys`.
"""
import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app


class SecretError(RuntimeError):
    mail_fault = True  # stored credentials that cannot be read: the account's fault, not a bug


def _fernet() -> MultiFernet:
    keys = current_app.config.get("EIS_ENCRYPTION_KEYS")
    if not keys:
        if not (current_app.debug or current_app.testing or current_app.config.get("EIS_ALLOW_DEV_SECRET")):
            raise SecretError("EIS_ENCRYPTION_KEYS is not set: secrets cannot be stored.")
        # Development only: derive a key from SECRET_KEY so the demo needs no set-up.
        digest = hashlib.sha256(("eis-dev:" + current_app.config["SECRET_KEY"]).encode()).digest()
        keys = base64.urlsafe_b64encode(digest).decode()
    try:
        return MultiFernet([Fernet(k.strip()) for k in keys.split(",") if k.strip()])
    except ValueError as exc:
        raise SecretError("EIS_ENCRYPTION_KEYS holds a malformed key (expected Fernet keys).") from exc


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretError("a stored secret cannot be decrypted with EIS_ENCRYPTION_KEYS") from exc


def rotate(token: str) -> str:
    return _fernet().rotate(token.encode()).decode()


def new_key() -> str:
    return Fernet.generate_key().decode()
