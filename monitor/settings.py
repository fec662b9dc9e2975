"""Django settings for Pulseboard, read from the environment.

Nothing set means the embedded mode: SQLite and the in-memory channel layer.
DATABASE_URL and REDIS_URL switch to PostgreSQL and channels-redis. Every
variable is documented in .env.example and the README.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from monitor.env import (
    database_from_url,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("PULSEBOARD_VAR_DIR") or BASE_DIR / "var")
TESTING = "pytest" in sys.modules or "test" in sys.argv[1:2]

DEBUG = env_bool("DEBUG", True)


def _secret_key() -> str:
    """Return SECRET_KEY; in DEBUG generate one once and keep it in var/ so sessions survive restarts."""
    key = env_str("SECRET_KEY")
    if key:
        if not DEBUG and len(key) < 32:
            raise ImproperlyConfigured(
                "SECRET_KEY is shorter than 32 characters. Generate one with: openssl rand -hex 32"
            )
        return key
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off. Generate one with: openssl rand -hex 32")
    path = VAR_DIR / "secret_key"
    if path.exists():
        return path.read_text().strip()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    path.write_text(key)
    path.chmod(0o600)
    return key


SECRET_KEY = _secret_key()

HOST = env_str("HOST", "127.0.0.1")
PORT = env_int("PORT", 8000, minimum=1, maximum=65535)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
CSRF_FAILURE_VIEW = "dashboard.csrf.csrf_failure"  # API clients get the one JSON error shape
for _origin in CSRF_TRUSTED_ORIGINS:
    if "://" not in _origin:
        raise ImproperlyConfigured(f"CSRF_TRUSTED_ORIGINS entry {_origin!r} needs a scheme, e.g. https://{_origin}")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "dashboard.readtokens.ReadTokenMiddleware",  # Authorization: Bearer pbr_… reads as the token's user
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "dashboard.csp.ContentSecurityPolicyMiddleware",
    # Last, as django-axes asks: it turns a refused login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "monitor.urls"
ASGI_APPLICATION = "monitor.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
DATABASE_URL = env_url("DATABASE_URL", ("postgres", "postgresql"))
if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH") or VAR_DIR / "pulseboard.sqlite3",
            # WAL lets readers (charts) run while the writer commits; the busy
            # timeout makes a second writer wait instead of failing at once.
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
            },
            # Tests use a file, not Django's shared-cache memory database: that
            # one locks whole tables and fails at once ("database table is
            # locked") when the writer thread and a request thread overlap,
            # which a file with WAL and a busy timeout never does.
            "TEST": {"NAME": str(Path(tempfile.gettempdir()) / f"pulseboard-test-{os.getpid()}.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer --------------------------------------------------------
REDIS_URL = env_url("REDIS_URL", ("redis", "rediss", "unix"))
CHANNEL_CAPACITY = env_int("CHANNEL_CAPACITY", 1000, minimum=10)
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # Pub/sub layer: group_send is one PUBLISH whatever the group size,
            # and no per-message keys linger in Redis. Each server process
            # subscribes once (see dashboard/live/hub.py), so group membership
            # lives in the process, not in Redis with an expiry.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # redis-py 8 sets a 5 s socket timeout by default,
                        # which kills a quiet subscriber's reader.
                        "socket_timeout": None,
                        "socket_connect_timeout": 5,
                        "socket_keepalive": True,
                        "health_check_interval": 15,
                    }
                ],
                "capacity": CHANNEL_CAPACITY,
                # Separate deployments (or test runs) sharing one Redis must not hear each other's groups.
                "prefix": env_str("CHANNEL_LAYER_PREFIX", "asgi"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": CHANNEL_CAPACITY},
        }
    }

# --- Auth, i18n, static ---------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# Failed sign-ins are counted (django-axes): the first backend refuses a
# locked-out client before the password is even checked. docs/security.md, "Sign-in throttling".
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env_bool("LOGIN_THROTTLE", True)
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_COOLOFF_MIN = env_int("LOGIN_COOLOFF_MIN", 15, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_COOLOFF_MIN)
# Per user name and address: an attacker elsewhere cannot lock the admin out,
# and one typo-prone colleague does not lock out the whole office. "ip" locks
# the address whatever names it tries (password spraying), at that risk.
LOGIN_LOCKOUT_BY = env_str("LOGIN_LOCKOUT_BY", "username+ip")
if LOGIN_LOCKOUT_BY not in ("username+ip", "ip"):
    raise ImproperlyConfigured("LOGIN_LOCKOUT_BY must be 'username+ip' or 'ip'.")
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]] if LOGIN_LOCKOUT_BY == "username+ip" else ["ip_address"]
AXES_RESET_ON_SUCCESS = True
# A retry during the lockout does not push its end further out: the page can say when to come back.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "dashboard.lockout.locked_out"
AXES_VERBOSE = False  # one WARNING line per lockout is enough (dashboard/lockout.py)
AXES_DISABLE_ACCESS_LOG = True  # successful sign-ins are not kept in a table

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
SERVE_STATIC = env_bool("SERVE_STATIC", True)

# --- TLS and cookies ------------------------------------------------------
TLS = env_bool("TLS", False)
SESSION_COOKIE_SECURE = TLS
CSRF_COOKIE_SECURE = TLS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if TLS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = TLS
# The header only makes the site eligible; nothing is preloaded until the operator submits it to hstspreload.org.
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", TLS)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", TLS)
# Load balancers probe over plain HTTP on the private network; agents and browsers are redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# dashboard/csp.py adds this to every response; {socket} is ws:// and wss://
# of the request's host. No 'unsafe-inline' anywhere: the pages and the admin
# have no inline script or style. Empty turns the header off.
CONTENT_SECURITY_POLICY = env_str(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' {socket}; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'",
)

# --- Pulseboard -----------------------------------------------------------
PULSEBOARD = {
    # Create Source/Metric rows for keys not seen before ("create") or reject
    # such readings ("refuse"): see docs/ingest.md.
    "UNKNOWN_METRICS": env_str("PULSEBOARD_UNKNOWN_METRICS", "create"),
    # Readings older than this are rejected as outside retention.
    "MAX_AGE_S": env_int("PULSEBOARD_MAX_AGE_S", 7 * 86400, minimum=60),
    # Readings further in the future than this are rejected (clock skew).
    "MAX_FUTURE_S": env_int("PULSEBOARD_MAX_FUTURE_S", 300, minimum=0),
    "MAX_BODY_BYTES": env_int("PULSEBOARD_MAX_BODY_BYTES", 5 * 1024 * 1024, minimum=1024),
    "MAX_SAMPLES_PER_REQUEST": env_int("PULSEBOARD_MAX_SAMPLES_PER_REQUEST", 10_000, minimum=1),
    # Largest batch the writer commits at once; bigger backlogs are split.
    "WRITE_BATCH_MAX": env_int("PULSEBOARD_WRITE_BATCH_MAX", 20_000, minimum=1),
    # Writer threads (connections) per process; 0 is 2 on PostgreSQL, 1 on SQLite (one writer at a time).
    "WRITER_THREADS": env_int("PULSEBOARD_WRITER_THREADS", 0, minimum=0),
    "RATE_LIMIT_PER_S": env_float("PULSEBOARD_RATE_LIMIT_PER_S", 200.0, minimum=0.0),
    "RATE_LIMIT_BURST": env_int("PULSEBOARD_RATE_LIMIT_BURST", 400, minimum=1),
    "HISTORY_ON_SUBSCRIBE_S": env_int("PULSEBOARD_HISTORY_ON_SUBSCRIBE_S", 300, minimum=0),
    # Metric keys one live connection may hold, however subscribed (keys or globs; docs/protocol.md).
    "LIVE_MAX_KEYS": env_int("PULSEBOARD_LIVE_MAX_KEYS", 10_000, minimum=1),
    # Globs one subscribe message may carry; each is matched against every metric key of the process.
    "LIVE_MAX_GLOBS": env_int("PULSEBOARD_LIVE_MAX_GLOBS", 16, minimum=1),
    # A live connection whose ack window stays full this long is closed with 4008 (docs/protocol.md).
    "LIVE_STALL_S": env_float("PULSEBOARD_LIVE_STALL_S", 30.0, minimum=0.5),
    # Live heartbeat interval; connections hear of a degraded layer or database within two of them.
    "LIVE_HEARTBEAT_S": env_float("PULSEBOARD_LIVE_HEARTBEAT_S", 25.0, minimum=0.5),
    # How often each process checks what it delivered live against the database (at most 5 s).
    "LIVE_RECONCILE_S": env_float("PULSEBOARD_LIVE_RECONCILE_S", 5.0, minimum=0.2),
    # Bytes one Server-Sent Events response carries before it ends and the browser resumes.
    "SSE_RESPONSE_BYTES": env_int("PULSEBOARD_SSE_RESPONSE_BYTES", 1024 * 1024, minimum=4096),
    # Send live frames straight to the socket when nothing is queued (dashboard/fastpaths/writethrough.py).
    "WRITE_THROUGH": env_bool("PULSEBOARD_WRITE_THROUGH", True),
    # How long each history tier is kept, in days; a metric's own
    # raw/minute/ten_minute/hour_retention_days override these (docs/history.md).
    "RETENTION_RAW_DAYS": env_int("PULSEBOARD_RETENTION_RAW_DAYS", 7, minimum=1),
    "RETENTION_MINUTE_DAYS": env_int("PULSEBOARD_RETENTION_MINUTE_DAYS", 90, minimum=1),
    "RETENTION_TEN_MINUTE_DAYS": env_int("PULSEBOARD_RETENTION_TEN_MINUTE_DAYS", 365, minimum=1),
    "RETENTION_HOUR_DAYS": env_int("PULSEBOARD_RETENTION_HOUR_DAYS", 5 * 365, minimum=1),
    # Seconds between retention passes in the server (which also create the coming days' partitions).
    "RETENTION_INTERVAL_S": env_float("PULSEBOARD_RETENTION_INTERVAL_S", 3600.0, minimum=1.0),
    # Alert notifications: attempts per webhook or email, first retry delay
    # (doubling after each failure). See docs/dashboards.md.
    "NOTIFY_ATTEMPTS": env_int("PULSEBOARD_NOTIFY_ATTEMPTS", 5, minimum=1),
    "NOTIFY_BACKOFF_S": env_float("PULSEBOARD_NOTIFY_BACKOFF_S", 1.0, minimum=0.0),
}
if PULSEBOARD["UNKNOWN_METRICS"] not in ("create", "refuse"):
    raise ImproperlyConfigured("PULSEBOARD_UNKNOWN_METRICS must be 'create' or 'refuse'.")

# --- Email (alert notifications) ------------------------------------------
# The console backend prints emails to the server log until SMTP is configured.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "pulseboard@localhost")

# Scrapers send this as "Authorization: Bearer <token>" to read /metrics; staff sessions need none.
METRICS_TOKEN = env_str("METRICS_TOKEN")

LOG_FORMAT = env_str("LOG_FORMAT", "plain").lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} must be 'plain' or 'json'.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "dashboard.jsonlog.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        # One line per agent POST drowns what matters; failures are logged by the sink itself.
        "httpx": {"level": "WARNING"},
        # django-axes logs each failed sign-in (user name masked) at WARNING; its INFO lines are bookkeeping.
        "axes": {"level": "WARNING"},
    },
}
