"""Settings for the Turnout control plane, read from the environment only.

Production differs from a laptop only in environment variables. With neither
``DATABASE_URL`` nor ``REDIS_URL`` set, Turnout runs on embedded defaults: SQLite
under ``TURNOUT_DATA_DIR`` and Celery's filesystem broker, so ``make run`` works
on a machine with no services at all.
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from controlplane.env import (
    check_redis_url,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_str,
    parse_database_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("TURNOUT_DATA_DIR") or BASE_DIR / "var")

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY") or ""
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY: required when DEBUG is off (or set SECRET_KEY_FILE)"
        )
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Where people reach the dashboard; alerts link to it.
SITE_URL = (env_str("SITE_URL") or "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "migrations_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"
ASGI_APPLICATION = "controlplane.asgi.application"

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

# --- Database -----------------------------------------------------------------
_database_url = env_str("DATABASE_URL")
if _database_url:
    _default_db = parse_database_url("DATABASE_URL", _database_url)
else:
    _default_db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / "turnout.sqlite3"),
    }
_default_db["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 60, minimum=0)
_default_db["CONN_HEALTH_CHECKS"] = True
if _default_db["ENGINE"].endswith("sqlite3"):
    # The embedded default serves a web process, a worker and beat at once.
    _default_db["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
DATABASES = {"default": _default_db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache, Celery -------------------------------------------------------
_redis_url = env_str("REDIS_URL")
REDIS_URL = check_redis_url("REDIS_URL", _redis_url) if _redis_url else None

if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL or "filesystem://"
if CELERY_BROKER_URL == "filesystem://":
    # kombu's filesystem transport, writing each message atomically (see controlplane/broker.py).
    CELERY_BROKER_TRANSPORT = "controlplane.broker:Transport"
    _queue_dir = DATA_DIR / "celery-queue"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(DATA_DIR / "celery-processed"),
        "control_folder": str(DATA_DIR / "celery-control"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 60, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 90, minimum=1)
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 2, minimum=1)
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 4, minimum=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes the database connection around every task unless told to
# reuse it; a reconnect costs ~8 ms here, more than an engine evaluation (bench_engine.py).
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000, minimum=0)
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# How often the rollback engine looks at every running plan.
TURNOUT_EVALUATION_INTERVAL = env_float(
    "TURNOUT_EVALUATION_INTERVAL", 15.0, minimum=0.5, maximum=3600
)
# Raw outcomes older than this are purged; per-window aggregates are kept.
TURNOUT_RAW_RETENTION_DAYS = env_int("TURNOUT_RAW_RETENTION_DAYS", 30, minimum=1)
# Most events one ingest request may carry (413 beyond).
TURNOUT_INGEST_MAX_BATCH = env_int("TURNOUT_INGEST_MAX_BATCH", 1000, minimum=1, maximum=100_000)
# Candidate calls one shadow task makes at once (they wait on the network, not the CPU).
TURNOUT_SHADOW_CONCURRENCY = env_int("TURNOUT_SHADOW_CONCURRENCY", 32, minimum=1, maximum=1000)
# A claimed shadow sample is another worker's after this long (a worker died mid-call): longer
# than one call with its retries (TURNOUT_SHADOW_CALL_TIMEOUT per attempt, 60 s of retries).
TURNOUT_SHADOW_LEASE_SECONDS = env_float(
    "TURNOUT_SHADOW_LEASE_SECONDS", 180.0, minimum=1.0, maximum=3600.0
)
# One candidate call's timeout in a shadow task, per attempt.
TURNOUT_SHADOW_CALL_TIMEOUT = env_float(
    "TURNOUT_SHADOW_CALL_TIMEOUT", 30.0, minimum=0.1, maximum=600.0
)
# The same page (channel, dedup key, event) within this window folds into the open one.
TURNOUT_ALERT_DEDUP_MINUTES = env_int("TURNOUT_ALERT_DEDUP_MINUTES", 30, minimum=0)
# Delivery attempts per alert before it is marked failed (transient errors are retried).
TURNOUT_ALERT_MAX_ATTEMPTS = env_int("TURNOUT_ALERT_MAX_ATTEMPTS", 8, minimum=1, maximum=50)
# Bearer token /metrics requires; unset: /metrics answers loopback clients only.
TURNOUT_METRICS_TOKEN = env_str("TURNOUT_METRICS_TOKEN")
# Decisions per second one SDK key may ask of the server (429 beyond); 0 disables.
TURNOUT_RATE_LIMIT_PER_KEY = env_int("TURNOUT_RATE_LIMIT_PER_KEY", 2000, minimum=0)

# One schedule for the whole project; each entry expires with its period so a stalled
# worker never works through a backlog of stale evaluations.
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "evaluate-plans": {
        "task": "turnout.evaluate_plans",
        "schedule": TURNOUT_EVALUATION_INTERVAL,
        "options": {"expires": TURNOUT_EVALUATION_INTERVAL},
    },
    "purge-outcomes": {
        "task": "turnout.purge_outcomes",
        "schedule": 3600.0,
        "options": {"expires": 3000.0},
    },
    "sweep-alerts": {
        "task": "turnout.sweep_alerts",
        "schedule": 15.0,
        "options": {"expires": 14.0},
    },
    "sweep-shadow": {
        "task": "turnout.sweep_shadow",
        "schedule": 60.0,
        "options": {"expires": 55.0},
    },
    "purge-shadow": {
        "task": "turnout.purge_shadow",
        "schedule": 3600.0,
        "options": {"expires": 3000.0},
    },
    "apply-held-feedback": {
        "task": "turnout.apply_held_feedback",
        "schedule": 60.0,
        "options": {"expires": 55.0},
    },
}
# A mounted copy of the community price map (model_prices_and_context_window.json), refreshed daily.
TURNOUT_PRICE_MAP_PATH = env_str("TURNOUT_PRICE_MAP_PATH")
if TURNOUT_PRICE_MAP_PATH:
    CELERY_BEAT_SCHEDULE["import-prices"] = {
        "task": "turnout.import_prices",
        "schedule": 24 * 3600.0,
        "args": [TURNOUT_PRICE_MAP_PATH],
        "options": {"expires": 3600.0},
    }

# --- Auth, i18n, static ---------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
LOGIN_URL = "/admin/login/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "migrations_app.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

EMAIL_BACKEND = env_str("EMAIL_BACKEND") or (
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend"
)
EMAIL_HOST = env_str("EMAIL_HOST") or "localhost"
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL") or "turnout@localhost"

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL") or "INFO"},
}
