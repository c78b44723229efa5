"""The mail the tests read: the project's own messages, and the external corpus as an extra.

tests/mail holds this project's own hand-written messages (always there): the tricky
cases tests assert on, and hostile and broken mail for the never-crashes tests.

The external corpus is third-party fixtures under their own licences, kept outside the
repository: ../shared/corpus beside the project, else the directory in EIS_CORPUS_DIR.
Without it the tests that need it are skipped; with EIS_REQUIRE_CORPUS=1 (CI sets it)
they fail instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN_DIR = ROOT / "tests" / "mail"

REQUIRED = os.environ.get("EIS_REQUIRE_CORPUS", "").strip() not in ("", "0")
SKIP_REASON = "external corpus not present; CI sets EIS_REQUIRE_CORPUS=1"
MISSING = ("The external mail corpus was not found (expected ../shared/corpus beside the "
           "project or a directory in EIS_CORPUS_DIR), and EIS_REQUIRE_CORPUS=1 requires it.")


def external_dir() -> Path | None:
    """The external corpus: ../shared/corpus beside the project, else EIS_CORPUS_DIR."""
    beside = ROOT.parent / "shared" / "corpus"
    if beside.is_dir():
        return beside
    configured = os.environ.get("EIS_CORPUS_DIR")
    if configured and Path(configured).is_dir():
        return Path(configured)
    return None


EXTERNAL = external_dir()


def own_files() -> list[Path]:
    return sorted(OWN_DIR.glob("*.eml"))


def own_bytes(name: str) -> bytes:
    return (OWN_DIR / name).read_bytes()


def require_external() -> Path:
    """The external corpus; without it the calling test is skipped (failed when required)."""
    if EXTERNAL is None:
        if REQUIRED:
            pytest.fail(MISSING, pytrace=False)
        pytest.skip(SKIP_REASON)
    return EXTERNAL


def external_files() -> list[Path]:
    """Every file of the external corpus (skips or fails the calling test without it)."""
    root = require_external()
    return sorted(p for p in root.rglob("*") if p.is_file())


def message_files() -> list[Path]:
    """The own messages, then the external corpus's files when it is there. A missing
    corpus fails the calling test when required; otherwise the own messages go alone."""
    if EXTERNAL is None and not REQUIRED:
        return own_files()
    return own_files() + external_files()


def message_params() -> list:
    """Parameters for a test over every message file: the own ones, then the external
    corpus's; a missing corpus is one placeholder (None) that `read` skips or fails."""
    params = [pytest.param(p, id=f"own/{p.name}") for p in own_files()]
    if EXTERNAL is None:
        return params + [pytest.param(None, id="external-corpus")]
    return params + [pytest.param(p, id=f"corpus/{p.relative_to(EXTERNAL)}")
                     for p in sorted(EXTERNAL.rglob("*")) if p.is_file()]


def read(path: Path | None) -> bytes:
    """A message_params() file's bytes; the missing-corpus placeholder skips or fails."""
    if path is None:
        require_external()
        raise AssertionError("unreachable: the external corpus exists")
    return path.read_bytes()
