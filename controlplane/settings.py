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
    env_http_url,
    env_int,
    env_list,
    env_str,
    parse_database_url,
)
from migrations_app.secret_policy import parse_host_rules, parse_var_patterns

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
    "drf_spectacular",
    # Swagger UI's assets, served from here (no CDN): /api/docs works offline.
    "drf_spectacular_sidecar",
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
# Every Redis use waits at most this long to connect and for each reply. A Redis that hangs
# (stopped, a dead route: connections accepted or packets dropped, nothing answered) must cost
# a request a bounded wait, after which it degrades as when Redis refuses: kombu waits forever
# for a reply by default, and a request stuck on a publish took a server thread with it.
REDIS_CONNECT_TIMEOUT = env_float("REDIS_CONNECT_TIMEOUT", 1.0, minimum=0.05, maximum=30.0)
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 2.0, minimum=0.05, maximum=60.0)

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
                "socket_timeout": REDIS_SOCKET_TIMEOUT,
            },
        }
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
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
        # Above kombu's 1 s BRPOP wait, so a worker's idle poll never times out.
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
    }
# (Re)connecting to the broker, retries included, gives up after this long.
CELERY_BROKER_CONNECTION_TIMEOUT = REDIS_CONNECT_TIMEOUT
# A publish that fails is tried once more, at once. Requests enqueue after their commit and
# never fail for it (the sweepers enqueue what is pending), so waiting longer buys nothing.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
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
# How often the replay sweep starts replays, re-enqueues lost calls and decides finished ones.
TURNOUT_REPLAY_SWEEP_SECONDS = env_float(
    "TURNOUT_REPLAY_SWEEP_SECONDS", 10.0, minimum=0.5, maximum=3600.0
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
# Where SDKs reach the change stream (the ASGI stream server, e.g. http://turnout:8001): the
# config response names it, and the API server (WSGI), which never holds a stream, points there.
TURNOUT_STREAM_URL = env_http_url("TURNOUT_STREAM_URL")
# Without that URL: the stream server's port, advertised on the host each request reached the
# API by (a host a remote SDK can reach, as a fixed loopback URL is not). 0: not known.
TURNOUT_STREAM_PORT = env_int("TURNOUT_STREAM_PORT", 0, minimum=0, maximum=65535)

# --- What provider connections and alert channels may name (migrations_app/secret_policy.py) ---
# A connection's key variable is sent as a bearer token to its base URL by the shadow workers
# and by every application using complete(); whoever may edit a connection must not be able to
# point either at something else. Checked when a row is saved and again when it is used.
#
# Turnout's own settings and the process's infrastructure: no connection or channel may name
# them, whatever the patterns below allow (tests/migrations_app/test_secret_policy.py checks that
# every variable this file reads is covered).
TURNOUT_RESERVED_VARS = (
    "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "CSRF_*", "SITE_URL", "SESSION_*", "LOG_LEVEL",
    "DATABASE_URL", "DB_*", "PG*", "POSTGRES_*", "REDIS_*", "CELERY_*", "EMAIL_*",
    "DEFAULT_FROM_EMAIL", "DJANGO_*", "TURNOUT_*", "WEB_*", "*_FILE",
)  # fmt: skip
# Patterns (``*``, ``?``) a provider connection's API key variable must match.
TURNOUT_PROVIDER_KEY_VARS = parse_var_patterns(
    "TURNOUT_PROVIDER_KEY_VARS", env_list("TURNOUT_PROVIDER_KEY_VARS", ["*_API_KEY"])
)
# Patterns an alert channel's URL and secret variables must match.
TURNOUT_ALERT_VARS = parse_var_patterns(
    "TURNOUT_ALERT_VARS", env_list("TURNOUT_ALERT_VARS", ["*_URL", "*_KEY", "*_SECRET", "*_TOKEN"])
)
# Hosts a provider connection's base URL may name: names, ``*.domain``, addresses, networks
# (CIDR), or ``*`` for any name and any public address. Private and loopback addresses only
# when listed; link-local and cloud metadata addresses never. An empty base URL (the vendor's
# own endpoint) is always allowed. The default: the seeded vendors and this machine (the
# provider simulator, a local Ollama or vLLM).
TURNOUT_PROVIDER_HOSTS = env_list(
    "TURNOUT_PROVIDER_HOSTS",
    [
        "api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com",
        "api.mistral.ai", "api.together.xyz", "api.groq.com", "api.fireworks.ai",
        "localhost", "127.0.0.0/8", "::1",
    ],
)  # fmt: skip
TURNOUT_PROVIDER_HOST_RULES = parse_host_rules("TURNOUT_PROVIDER_HOSTS", TURNOUT_PROVIDER_HOSTS)

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
    "sweep-judge-samples": {
        "task": "turnout.sweep_judge_samples",
        "schedule": 60.0,
        "options": {"expires": 55.0},
    },
    "purge-judge-samples": {
        "task": "turnout.purge_judge_samples",
        "schedule": 3600.0,
        "options": {"expires": 3000.0},
    },
    # Replays: start the replay of a plan at its replay stage, re-enqueue lost calls, decide.
    "sweep-replays": {
        "task": "turnout.sweep_replays",
        "schedule": TURNOUT_REPLAY_SWEEP_SECONDS,
        "options": {"expires": TURNOUT_REPLAY_SWEEP_SECONDS},
    },
    "purge-datasets": {
        "task": "turnout.purge_datasets",
        "schedule": 3600.0,
        "options": {"expires": 3000.0},
    },
    "apply-held-feedback": {
        "task": "turnout.apply_held_feedback",
        "schedule": 60.0,
        "options": {"expires": 55.0},
    },
    # What traffic left pending after its last fold (outcomes/segment_rollup.py).
    "fold-pending": {
        "task": "turnout.fold_pending",
        "schedule": 10.0,
        "options": {"expires": 9.0},
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
    "DEFAULT_PARSER_CLASSES": ["migrations_app.api.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "migrations_app.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# The OpenAPI schema (/api/v1/schema) and its docs (/api/docs): migrations_app/api/openapi.py.
SPECTACULAR_SETTINGS = {
    "TITLE": "Turnout API",
    "DESCRIPTION": "Migrate production LLM traffic between models: plans as code, routing "
    "decisions, outcomes and feedback, shadow samples. Errors are {code, message, details} "
    "with a stable code (OFREP answers in its own protocol's format).",
    "VERSION": "1",
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/(api/v1|ofrep/v1)",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_GENERATE_CHOICE_DESCRIPTION": False,
    "ENUM_NAME_OVERRIDES": {
        "GuardrailActionEnum": "migrations_app.models.plans.GuardrailAction",
        "PhaseKindEnum": "migrations_app.models.plans.PhaseKind",
        "PromptModeEnum": "migrations_app.models.plans.PromptMode",
        "ToleranceKindEnum": "migrations_app.models.plans.ToleranceKind",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "migrations_app.api.openapi.postprocess",
    ],
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
