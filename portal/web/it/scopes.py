"""OAuth scopes each provider's mailboxes need (the seed's list for Microsoft), and how a
granted set compares with it."""
from __future__ import annotations

from dataclasses import dataclass

REQUIRED_SCOPES = {
    "microsoft": ("IMAP.AccessAsUser.All", "SMTP.Send", "openid", "email", "profile", "offline_access"),
    "google": ("https://mail.google.com/", "openid", "email", "profile"),
}
# Providers answer with long names for some scopes; compared by what they mean.
_ALIASES = {
    "https://www.googleapis.com/auth/userinfo.email": "email",
    "https://www.googleapis.com/auth/userinfo.profile": "profile",
}
PASSWORD_ONLY = "password (no OAuth scopes)"


@dataclass(frozen=True)
class ScopeCheck:
    oauth: bool
    required: tuple[str, ...]
    granted: tuple[str, ...]
    missing: tuple[str, ...]
    extra: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.oauth or not self.missing


def _canonical(scope: str) -> str:
    scope = scope.strip()
    if scope in _ALIASES:
        return _ALIASES[scope]
    # Microsoft: "https://outlook.office.com/IMAP.AccessAsUser.All" means IMAP.AccessAsUser.All.
    if scope.startswith("https://outlook.office.com/") or scope.startswith("https://outlook.office365.com/"):
        return scope.rsplit("/", 1)[1]
    return scope


def check_scopes(provider: str, granted: list | None) -> ScopeCheck:
    required = REQUIRED_SCOPES.get(provider)
    if required is None:
        return ScopeCheck(False, (), (), (), ())
    have = tuple(str(s) for s in (granted or []) if str(s).strip())
    canonical = {_canonical(s).lower() for s in have}
    missing = tuple(s for s in required if s.lower() not in canonical)
    wanted = {s.lower() for s in required}
    extra = tuple(s for s in have if _canonical(s).lower() not in wanted)
    return ScopeCheck(True, required, have, missing, extra)
