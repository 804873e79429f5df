"""Settings for the chat site, read from the environment with offline defaults.

With no environment at all the site runs on SQLite against the local Ably and Anthropic
stand-ins (`make run`). Production sets real keys; the endpoint settings then default to the
real services, so switching is environment variables only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import django_stubs_ext
import environ
from csp.constants import NONE, SELF

# `ModelAdmin[Conversation]` and the like, as django-stubs types them, at run time too.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# The development key of the local Ably stand-in (emulators/ably uses the same default).
DEV_ABLY_API_KEY = "devapp.devkey:dev-secret-change-me"
LOCAL_ABLY_ENDPOINT = "http://127.0.0.1:8788"
LOCAL_ANTHROPIC_BASE_URL = "http://127.0.0.1:8789"

DEBUG: bool = env.bool("DEBUG", default=False)
SECRET_KEY: str = env.str(
    "SECRET_KEY", default="insecure-dev-secret-key-change-me-in-production-0123456789"
)
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "axes",
    "csp",
    "conversations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before WhiteNoise, so static files carry the policy too (an SVG opened on its own).
    "chatsite.policy.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "chatsite.policy.ProductErrorPagesMiddleware",
    # Last, as axes asks: turns a locked-out log-in into its lockout response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
WSGI_APPLICATION = "chatsite.wsgi.application"
ASGI_APPLICATION = "chatsite.asgi.application"

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

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
# Persistent connections: a new one per request costs more than the request itself (Postgres
# forks a backend; SQLite re-reads the schema). The health check replaces one that died.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", env.bool("CONN_HEALTH_CHECKS", default=True))
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several agent processes and web workers share the file. WAL lets readers run beside the
    # one writer; IMMEDIATE takes the write lock when a transaction begins, so a writer waits
    # out the busy timeout up front instead of failing with "database is locked" when a read
    # transaction tries to upgrade; the timeout (seconds) is how long a writer waits its turn.
    sqlite_options = DATABASES["default"].setdefault("OPTIONS", {})
    sqlite_options.setdefault("timeout", env.float("SQLITE_BUSY_TIMEOUT", default=20.0))
    sqlite_options.setdefault("transaction_mode", "IMMEDIATE")
    # synchronous=NORMAL is SQLite's recommendation for WAL: a commit no longer waits for an
    # fsync (~0.1 ms of CPU and ~0.5 ms on the agent's database thread each, three per reply,
    # issue 14). The database stays consistent; only a power loss or an OS crash (never a
    # process crash) can lose the last commits before a checkpoint. Production runs Postgres.
    sqlite_options.setdefault("init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL")
    # A file, not memory, so agent subprocesses started by tests share the test database; one
    # per test run, so runs side by side don't delete each other's.
    DATABASES["default"].setdefault(
        "TEST",
        {
            "NAME": env.str(
                "TEST_DATABASE_NAME",
                default=str(Path(tempfile.gettempdir()) / f"chatsite-test-{os.getpid()}.sqlite3"),
            )
        },
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Login throttling (django-axes): the lockout check first, then the usual password check.
AUTHENTICATION_BACKENDS = [
    "conversations.throttling.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failed log-ins are counted per account and, separately, per client IP; reaching the limit on
# either locks it (the right password included) for LOGIN_LOCKOUT_MINUTES. Staff unlock early in
# the admin ("Access attempts"). Failures are forgotten LOGIN_LOCKOUT_MINUTES after the last one.
LOGIN_FAILURE_LIMIT: int = env.int("LOGIN_FAILURE_LIMIT", default=10)
LOGIN_LOCKOUT_MINUTES: int = env.int("LOGIN_LOCKOUT_MINUTES", default=15)
# Reverse proxies in front of the web server whose X-Forwarded-For is trusted for the client IP
# (0: REMOTE_ADDR, which a client cannot forge). Behind a proxy set it, or every user shares it.
LOGIN_TRUSTED_PROXY_COUNT: int = env.int("LOGIN_TRUSTED_PROXY_COUNT", default=0)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_FAILURE_LIMIT = "conversations.throttling.failure_limit"
AXES_COOLOFF_TIME = "conversations.throttling.cool_off"
# Not reset by a successful log-in: it would clear the IP's count too, so an attacker with an
# account of their own could log into it between guesses at someone else's.
AXES_RESET_ON_SUCCESS = False
AXES_LOCKOUT_CALLABLE = "conversations.throttling.locked_out"
AXES_USERNAME_CALLABLE = "conversations.throttling.attempted_username"
AXES_CLIENT_IP_CALLABLE = "conversations.throttling.client_ip"
# One row per attempt pair is enough; the per-attempt access log would grow without bound.
AXES_DISABLE_ACCESS_LOG = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "conversations:list"
LOGOUT_REDIRECT_URL = "login"
SIGNUP_ENABLED: bool = env.bool("SIGNUP_ENABLED", default=False)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# ably-js, marked, DOMPurify and highlight.js are served from the npm packages: no CDN offline.
NODE_MODULES_DIR = BASE_DIR / "node_modules"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    # Only the browser builds, under stable prefixes: {% static "vendor/ably/ably.min.js" %}.
    ("vendor/ably", NODE_MODULES_DIR / "ably" / "build"),
    ("vendor/marked", NODE_MODULES_DIR / "marked" / "lib"),
    ("vendor/dompurify", NODE_MODULES_DIR / "dompurify" / "dist"),
    # highlight.js ships its core only as CommonJS (es/core.js re-imports ../lib/core.js);
    # markdown.js wraps lib/core.js into a module and imports languages from es/.
    ("vendor/highlight.js/es", NODE_MODULES_DIR / "highlight.js" / "es"),
    ("vendor/highlight.js/lib", NODE_MODULES_DIR / "highlight.js" / "lib"),
]
# Uploaded attachments go through the default storage: a local folder unless MEDIA_STORAGE_BACKEND
# names another (e.g. storages.backends.s3.S3Storage from django-storages, options as JSON in
# MEDIA_STORAGE_OPTIONS). Never served from MEDIA_URL: only through the access-checked view.
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(BASE_DIR / "media")))
MEDIA_URL = "/media/"
STORAGES = {
    "default": {
        "BACKEND": env.str(
            "MEDIA_STORAGE_BACKEND", default="django.core.files.storage.FileSystemStorage"
        ),
        "OPTIONS": env.json("MEDIA_STORAGE_OPTIONS", default={}),
    },
    "staticfiles": {
        "BACKEND": env.str(
            "STATICFILES_BACKEND",
            default="chatsite.storage.StaticFilesStorage"
            if not DEBUG
            else "django.contrib.staticfiles.storage.StaticFilesStorage",
        )
    },
}

# Security: strict by default in production (DEBUG off and HTTPS asserted by the deployer).
SECURE_HTTPS: bool = env.bool("SECURE_HTTPS", default=False)
SESSION_COOKIE_SECURE = SECURE_HTTPS
CSRF_COOKIE_SECURE = SECURE_HTTPS
SECURE_SSL_REDIRECT = SECURE_HTTPS
SECURE_HSTS_SECONDS: int = env.int("SECURE_HSTS_SECONDS", default=31536000 if SECURE_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HTTPS
SECURE_HSTS_PRELOAD = SECURE_HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if SECURE_HTTPS else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# The page policy (django-csp): scripts, styles and fonts from our origin only, no inline script
# or style; images from our origin and data: only (a model's image URLs become links, see
# static/js/markdown.js). connect-src gains the Ably endpoints per response (chatsite/policy.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "media-src": [NONE],
        "object-src": [NONE],
        "frame-src": [NONE],
        "worker-src": [SELF],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# --- Ably -------------------------------------------------------------------------------------
# Without ABLY_API_KEY in the environment the site uses the local stand-in's development key and
# endpoint. With a real key and no ABLY_ENDPOINT, both SDKs talk to real Ably.
_ably_key_from_env: str = env.str("ABLY_API_KEY", default="")
ABLY_API_KEY = _ably_key_from_env or DEV_ABLY_API_KEY
# One setting points ably-js (browser) and ably-python (Django, agent) at a non-default endpoint,
# as a URL: http://host:port for a plain stand-in. Empty means Ably's own production endpoint.
ABLY_ENDPOINT: str = env.str(
    "ABLY_ENDPOINT", default="" if _ably_key_from_env else LOCAL_ABLY_ENDPOINT
)
ABLY_TOKEN_TTL_SECONDS: int = env.int("ABLY_TOKEN_TTL_SECONDS", default=3600)
ABLY_AGENT_CLIENT_ID: str = env.str("ABLY_AGENT_CLIENT_ID", default="agent")
# clientId of publishes made by Django itself (title changes, list updates).
ABLY_SERVER_CLIENT_ID: str = env.str("ABLY_SERVER_CLIENT_ID", default="server")

# --- Anthropic --------------------------------------------------------------------------------
_anthropic_key_from_env: str = env.str("ANTHROPIC_API_KEY", default="")
ANTHROPIC_API_KEY = _anthropic_key_from_env or "local-stand-in-key"
ANTHROPIC_BASE_URL: str = env.str(
    "ANTHROPIC_BASE_URL", default="" if _anthropic_key_from_env else LOCAL_ANTHROPIC_BASE_URL
)
CLAUDE_MODEL: str = env.str("CLAUDE_MODEL", default="claude-sonnet-5-5")
CLAUDE_MAX_TOKENS: int = env.int("CLAUDE_MAX_TOKENS", default=4096)
CLAUDE_SYSTEM_PROMPT: str = env.str(
    "CLAUDE_SYSTEM_PROMPT",
    default="You are Claude, a helpful assistant. Answer clearly; use Markdown where it helps.",
)
CLAUDE_CONTEXT_TOKEN_BUDGET: int = env.int("CLAUDE_CONTEXT_TOKEN_BUDGET", default=100_000)
# The Anthropic SDK's OpenTelemetry spans and trace propagation for the agent's model requests:
# off unless asked for (they need an OpenTelemetry SDK configured in the process; without one
# they only cost CPU, and the first request imports the propagators on the agent's event loop).
CLAUDE_OPEN_TELEMETRY: bool = env.bool("CLAUDE_OPEN_TELEMETRY", default=False)

# --- Attachments ------------------------------------------------------------------------------
# Defaults are the Messages API's own limits, so a file we accept is one Claude accepts. The API
# measures images and whole requests on the base64 text, which is 4/3 of the file: 5 MB of
# base64 is a 3.75 MiB image, and a 32 MB request holds at most 24 MiB of files.
ATTACHMENT_MAX_IMAGE_BYTES: int = env.int(
    "ATTACHMENT_MAX_IMAGE_BYTES", default=5 * 1024 * 1024 * 3 // 4
)
ATTACHMENT_MAX_IMAGE_SIDE: int = env.int("ATTACHMENT_MAX_IMAGE_SIDE", default=8000)
ATTACHMENT_MAX_PDF_BYTES: int = env.int("ATTACHMENT_MAX_PDF_BYTES", default=32 * 1024 * 1024)
ATTACHMENT_MAX_PDF_PAGES: int = env.int("ATTACHMENT_MAX_PDF_PAGES", default=100)
# Text and code files go to Claude as text; 512 KiB is ~130k tokens, already past most budgets.
ATTACHMENT_MAX_TEXT_BYTES: int = env.int("ATTACHMENT_MAX_TEXT_BYTES", default=512 * 1024)
ATTACHMENT_MAX_FILES_PER_PROMPT: int = env.int("ATTACHMENT_MAX_FILES_PER_PROMPT", default=20)
# The whole Messages request, base64 included (the API's 413 threshold).
ATTACHMENT_MAX_REQUEST_BYTES: int = env.int(
    "ATTACHMENT_MAX_REQUEST_BYTES", default=32 * 1024 * 1024
)

# --- Streaming --------------------------------------------------------------------------------
STREAMING_PATTERN: str = env.str("STREAMING_PATTERN", default="message-per-response")
if STREAMING_PATTERN not in ("message-per-response", "message-per-token"):
    raise environ.ImproperlyConfigured(
        "STREAMING_PATTERN must be 'message-per-response' or 'message-per-token'"
    )
MAX_PROMPT_CHARS: int = env.int("MAX_PROMPT_CHARS", default=20_000)
PROMPT_RATE_LIMIT_PER_MINUTE: int = env.int("PROMPT_RATE_LIMIT_PER_MINUTE", default=20)

# e.g. redis://127.0.0.1:6379/1 (Django's own Redis backend). Without it, a per-process cache.
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    # The same backend, without a new redis-py client per operation (see chatsite/cache.py).
    CACHES["default"]["BACKEND"] = "chatsite.cache.RedisCache"
# Sessions live in the database. With a cache every web process shares, `cached_db` reads them
# from the cache first (writes and logouts go to both). Not with a per-process cache: a session
# deleted at logout by one worker would live on in the other workers' caches until it expired.
_PROCESS_LOCAL_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)
SESSION_ENGINE: str = env.str(
    "SESSION_ENGINE",
    default="django.contrib.sessions.backends.db"
    if CACHES["default"]["BACKEND"] in _PROCESS_LOCAL_CACHES
    else "django.contrib.sessions.backends.cached_db",
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One INFO line per HTTP request would drown the publish and agent logs (httpx2: the
        # Anthropic SDK's own fork of httpx, one line per model request).
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # ably-python logs every frame and state change at INFO.
        "ably": {"level": "WARNING"},
        # django-axes: failed log-ins and lockouts are WARNINGs; its INFO is a banner per process.
        "axes": {"level": "WARNING"},
    },
}
