# Copy to instance/config.py and adjust. The environment overrides anything set here.
# SECRET_KEY = "a long random value"            # required outside debug: python -c 'import secrets; print(secrets.token_hex(32))'
# EIS_ENCRYPTION_KEYS = "fernet-key-1,old-key"  # python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'
# SQLALCHEMY_DATABASE_URI = "postgresql+psycopg://eis@db.internal/eis"   # or DATABASE_URL in the environment
# REDIS_URL = "redis://redis.internal:6379/0"   # unset: an embedded Redis under instance/
# EIS_BACKFILL_DAYS = 30
# EIS_SYNC_INTERVAL_MIN_MINUTES = 10
# EIS_SYNC_INTERVAL_MAX_MINUTES = 30
# EIS_PROBLEMATIC_AFTER_FAILURES = 5
# EIS_WEBHOOK_URL = "https://crm.example.com/hooks/eis"   # one webhook endpoint, all events (README "Webhooks")
# EIS_WEBHOOK_SECRET = "a long random value"              # the receiver checks EIS-Signature with it
# EIS_WEBHOOK_RATE_PER_SECOND = 10                         # requests to one endpoint at most
