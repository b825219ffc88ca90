"""The wire contract between SDKs and the control plane, in one place (docs/contracts.md).

Both sides import these values: the SDK to build and check what it sends, the server to check
what it receives and to name its errors. A value here changes for deployed SDKs too: changing
one is a breaking change of the v1 API. Pure data, no imports beyond the standard library: the
server may import this module without pulling in the SDK's HTTP client.
"""

from __future__ import annotations

from enum import StrEnum

# --- paths and headers ------------------------------------------------------------------------

API_PREFIX = "/api/v1"
CONFIG_PATH = f"{API_PREFIX}/sdk/config"
STREAM_PATH = f"{API_PREFIX}/sdk/stream"
DECIDE_PATH = f"{API_PREFIX}/decide"
PING_PATH = f"{API_PREFIX}/ping"
OUTCOMES_PATH = f"{API_PREFIX}/outcomes"
FEEDBACK_PATH = f"{API_PREFIX}/feedback"
SHADOW_PATH = f"{API_PREFIX}/shadow-samples"
METRICS_PATH = f"{API_PREFIX}/metrics"
# The pointwise judge's samples (a split's answers, each scored on the plan's rubric), and the
# labelling API people and scripts use to label shadow pairs blind (issue 15).
JUDGE_SAMPLES_PATH = f"{API_PREFIX}/judge-samples"
#: ``{PLANS_PATH}`` lists and creates plans; ``{PLANS_PATH}/<key>`` reads (status and
#: ``spec``), replaces, patches or deletes one; ``{PLANS_PATH}/<key>/<action>`` acts on it.
PLANS_PATH = f"{API_PREFIX}/plans"
#: Read-only lists a plan names things from: models, connections (never a secret), alert
#: channels (by name), templates and guardrail sets.
CATALOG_MODELS_PATH = f"{API_PREFIX}/catalog/models"
CONNECTIONS_PATH = f"{API_PREFIX}/catalog/connections"
ALERT_CHANNELS_PATH = f"{API_PREFIX}/alert-channels"
TEMPLATES_PATH = f"{API_PREFIX}/templates"
GUARDRAIL_SETS_PATH = f"{API_PREFIX}/guardrail-sets"
#: The OpenAPI 3.1 schema of every endpoint, and its interactive docs.
SCHEMA_PATH = f"{API_PREFIX}/schema"
DOCS_PATH = "/api/docs"
OFREP_PREFIX = "/ofrep/v1"
#: The config response's (and a refused stream's) header naming the stream server.
STREAM_URL_HEADER = "Turnout-Stream-URL"

# --- API keys ---------------------------------------------------------------------------------

SCOPE_DECIDE = "decide"  # config, stream, decide, OFREP
SCOPE_REPORT = "report"  # outcomes, feedback, metrics, shadow samples
SCOPE_ADMIN = "admin"  # a plan's status and its lifecycle actions
SCOPE_PLANS = "plans"  # create, change and delete plans (plans as code), read what they name
SCOPES = frozenset({SCOPE_DECIDE, SCOPE_REPORT, SCOPE_ADMIN, SCOPE_PLANS})
#: What ``POST {PLANS_PATH}/<key>/<action>`` may name.
PLAN_ACTIONS = frozenset({"start", "rollback", "pause", "resume", "advance"})

# --- what an event may say --------------------------------------------------------------------

#: The fixed list of error kinds (reference/providers.md): an outcome's ``error``, a shadow
#: sample's ``control.error``, a provider adapter's result. The statistics count every one of
#: them as a failure the user saw; alerts name the kind so on-call can tell an outage
#: (``overloaded``) from a worse model (``invalid_output``).
ERROR_KINDS = frozenset(
    {
        "rate_limited",
        "overloaded",
        "server_error",
        "timeout",
        "connection",
        "bad_request",
        "auth",
        "content_filter",
        "invalid_output",
        "empty_output",
    }
)
#: Kinds that are worth another attempt. A kind's default; a given error may still say
#: otherwise (a 429 for an exhausted quota is ``rate_limited`` but not transient).
TRANSIENT_KINDS = frozenset({"rate_limited", "overloaded", "server_error", "timeout", "connection"})
#: Feedback scales: ``thumbs`` scores -1 or 1, ``five`` scores 1 to 5.
FEEDBACK_SCALES = frozenset({"thumbs", "five"})
#: Why control answered a unit routed to the candidate (an outcome's ``fallback``): the
#: candidate failed with a transient error, or the prompt was too long for its context window.
FALLBACK_CANDIDATE_ERROR = "candidate_error"
FALLBACK_CONTEXT_WINDOW = "context_window"
FALLBACK_REASONS = frozenset({FALLBACK_CANDIDATE_ERROR, FALLBACK_CONTEXT_WINDOW})
#: A chat message's roles (``complete()``'s messages, a shadow sample's request).
ROLES = frozenset({"system", "user", "assistant"})

# --- per-request metrics: the application's own and the answer checks (docs/contracts.md) -----

#: A metric's kinds: ``rate`` takes 0 or 1 per request (task completed or not), ``mean`` a
#: number per request within the metric's declared bounds.
METRIC_KINDS = frozenset({"rate", "mean"})
METRIC_HIGHER_IS_BETTER = "higher_is_better"
METRIC_LOWER_IS_BETTER = "lower_is_better"
METRIC_DIRECTIONS = frozenset({METRIC_HIGHER_IS_BETTER, METRIC_LOWER_IS_BETTER})
#: A metric's name: lowercase letters, digits and underscores, starting with a letter.
METRIC_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"
MAX_METRIC_NAME_LENGTH = 48
#: Metrics one outcome event may carry (``metrics: {name: value}``).
MAX_METRICS_PER_EVENT = 32
#: The answer checks (``turnout.checks``), built-in metrics computed wherever Turnout sees an
#: answer: name -> (kind, direction). ``json_valid`` when JSON was asked for, ``schema_valid``
#: when the plan gives a JSON Schema, ``answer_chars`` the answer's length in characters.
CHECK_JSON_VALID = "json_valid"
CHECK_SCHEMA_VALID = "schema_valid"
CHECK_REFUSAL = "refusal"
CHECK_EMPTY = "empty_answer"
CHECK_TRUNCATED = "truncated"
CHECK_LENGTH = "answer_chars"
ANSWER_CHECKS: dict[str, tuple[str, str]] = {
    CHECK_JSON_VALID: ("rate", METRIC_HIGHER_IS_BETTER),
    CHECK_SCHEMA_VALID: ("rate", METRIC_HIGHER_IS_BETTER),
    CHECK_REFUSAL: ("rate", METRIC_LOWER_IS_BETTER),
    CHECK_EMPTY: ("rate", METRIC_LOWER_IS_BETTER),
    CHECK_TRUNCATED: ("rate", METRIC_LOWER_IS_BETTER),
    CHECK_LENGTH: ("mean", METRIC_LOWER_IS_BETTER),
}
#: ``answer_chars``'s bounds: an answer longer than this is counted at this length.
MAX_ANSWER_CHARS = 1_000_000
#: A plan's JSON Schema for answers (``schema_valid``): encoded size and nesting bounds.
MAX_ANSWER_SCHEMA_BYTES = 32_768
MAX_ANSWER_SCHEMA_DEPTH = 32
#: A declared metric's bounds (``mean``): finite, within this magnitude.
MAX_METRIC_BOUND = 1e12

# --- targeting (docs/contracts.md, "Targeting") ---------------------------------------------

#: Why a decision went the way it did: OFREP reasons, plus Turnout's own for a unit a rule
#: excluded (always control) and a unit a QA override sends to an arm. OFREP serves those two
#: as ``TARGETING_MATCH`` (its reason list is closed) and names Turnout's in the metadata.
REASON_EXCLUDED = "EXCLUDED"
REASON_OVERRIDE = "OVERRIDE"
#: A plan whose targeting this SDK cannot read (a newer server's operator): control, so
#: that an exclusion it cannot evaluate never sends an excluded unit to the candidate.
REASON_ERROR = "ERROR"
REASONS = frozenset(
    {"SPLIT", "STATIC", "DISABLED", "DEFAULT", REASON_EXCLUDED, REASON_OVERRIDE, REASON_ERROR}
)
#: Decisions served but counted in neither arm's statistics: the SDK marks their outcomes
#: (an outcome's ``reason``), ingest stores them and leaves them out of the aggregates.
UNCOUNTED_REASONS = frozenset({REASON_EXCLUDED, REASON_OVERRIDE, REASON_ERROR})
#: A rule's result: ``exclude`` (control, reason EXCLUDED), ``include`` (the general split;
#: later rules are not read), ``cohort`` (the split at the cohort's own weight).
RULE_RESULTS = frozenset({"exclude", "include", "cohort"})
#: A condition's operator. ``equals``/``in``/``not_in`` compare strings, numbers and booleans
#: of the same type; ``lt``... compare numbers; ``semver_*`` compare SemVer 2.0.0 strings;
#: ``regex`` is RE2 syntax (linear time), searched in a string; ``exists``: present, not null.
NUMERIC_OPERATORS = frozenset({"lt", "lte", "gt", "gte"})
SEMVER_OPERATORS = frozenset({"semver_eq", "semver_lt", "semver_lte", "semver_gt", "semver_gte"})
OPERATORS = frozenset(
    {"equals", "in", "not_in", "regex", "exists"} | NUMERIC_OPERATORS | SEMVER_OPERATORS
)
MAX_ATTRIBUTES = 32  # attributes one decision may carry (the server refuses more: 400)
MAX_ATTRIBUTE_KEY_LENGTH = 64
MAX_RULES = 50  # rules per plan
MAX_CONDITIONS = 16  # conditions per rule (all must hold)
MAX_RULE_VALUES = 1000  # values of one ``in`` / ``not_in`` list
MAX_RULE_NAME_LENGTH = 100
MAX_REGEX_LENGTH = 256  # a regex condition's pattern, in characters
#: A longer string attribute never matches a regex or semver condition: with RE2 the time is
#: linear anyway, and this bounds it.
MAX_MATCH_INPUT = 1024
#: A cohort's name: what rules assign and rollout steps target.
COHORT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MAX_OVERRIDES = 1000  # QA overrides per plan: every SDK holds them in its snapshot
MAX_OVERRIDE_DAYS = 90  # how far ahead an override may expire

# --- bounds -----------------------------------------------------------------------------------

MAX_PLAN_KEY_LENGTH = 63
MAX_ID_LENGTH = 64  # an event's id and its decision_id
MAX_UNIT_LENGTH = 256
MAX_MS = 24 * 3600 * 1000.0  # a request that took a day is a unit mistake, not a latency
MAX_TOKENS = 2**31 - 1
# Whatever the catalog says: no model takes or writes ten million tokens in one call, so a
# catalog typo cannot let an absurd count (and its cost) through either.
TOKENS_HARD_CAP = 10_000_000
# Containers within containers in a request body: a limit far above any real attribute map,
# context or JSON schema, and far below what overflows a recursive encoder or decoder.
MAX_JSON_DEPTH = 64
MAX_ATTRIBUTES_BYTES = 4096  # POST /decide's attributes, encoded
MAX_CONTENT_CHARS = 100_000  # one shadow-sample message, or the control answer
MAX_SCHEMA_BYTES = 32_768  # a shadow sample's json_schema, encoded
MAX_DECOMPRESSED_BYTES = 16 * 1024 * 1024  # an ingest body after gunzip
MAX_OFREP_BODY_BYTES = 16_384
#: Events one ingest request may carry unless the server sets TURNOUT_INGEST_MAX_BATCH.
DEFAULT_MAX_BATCH = 1000
#: Shadow samples per request the SDK sends: they carry whole prompts.
SHADOW_BATCH = 100


# --- error codes ------------------------------------------------------------------------------


class ErrorCode(StrEnum):
    """Every ``code`` of an error response ``{"code", "message", "details"}`` (every JSON API
    but OFREP, which answers in its own protocol's format). ``turnout.errors`` maps each to a
    typed exception; tests/sdk/test_contract.py checks that the server answers no other."""

    # 400
    VALIDATION_FAILED = "validation_failed"
    PARSE_ERROR = "parse_error"
    # 401, 403
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    # 404
    NOT_FOUND = "not_found"
    PLAN_NOT_FOUND = "plan_not_found"
    UNKNOWN_ACTION = "unknown_action"
    DATASET_NOT_FOUND = "dataset_not_found"
    REPLAY_NOT_FOUND = "replay_not_found"
    # 405, 406, 415: the request's form, not its content
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_ACCEPTABLE = "not_acceptable"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    # 409: the plan's state does not allow it
    ILLEGAL_TRANSITION = "illegal_transition"
    VERSION_CONFLICT = "version_conflict"
    NO_NEXT_STEP = "no_next_step"
    PERSON_REQUIRED = "person_required"
    ROUTING_FROZEN = "routing_frozen"
    PLAN_NOT_STARTABLE = "plan_not_startable"
    START_WARNINGS = "start_warnings"
    # 409: a replay still uses the dataset
    DATASET_IN_USE = "dataset_in_use"
    # 409: a key limited to some plans names a dataset whose versions it does not all see
    DATASET_NAME_TAKEN = "dataset_name_taken"
    # 409: the plan has no replay phase to run
    NO_REPLAY_PHASE = "no_replay_phase"
    # 413
    PAYLOAD_TOO_LARGE = "payload_too_large"
    BATCH_TOO_LARGE = "batch_too_large"
    # 421: the change stream is served elsewhere (details.stream_url)
    STREAM_NOT_SERVED_HERE = "stream_not_served_here"
    # 429
    RATE_LIMITED = "rate_limited"
    #: An error the server has no code of its own for: the HTTP status tells what it is.
    ERROR = "error"


class RejectionCode(StrEnum):
    """The ``code`` of one event a batch rejected (``{"rejected": [{"index", "field", "code",
    "message"}]}`` in a 200 answer): the event is dropped, the rest of its batch stored."""

    INVALID = "invalid"
    REQUIRED = "required"
    OUT_OF_RANGE = "out_of_range"
    OVER_MODEL_LIMIT = "over_model_limit"
    PLAN_NOT_FOUND = "plan_not_found"
    UNKNOWN_VERSION = "unknown_version"
    RUN_MISMATCH = "run_mismatch"
    PARAM_NOT_ALLOWED = "param_not_allowed"
    #: A metric name the plan (or the catalog) does not declare, or an answer check's name
    #: sent as an application metric.
    METRIC_NOT_DECLARED = "metric_not_declared"
