"""Targeting rules: which units a plan excludes, includes, or puts in a cohort, from the
attributes a decision carries (docs/contracts.md, "Targeting").

Pure: no I/O, no clock. A rule is a list of conditions (all must hold; none: every unit) and a
result. :func:`compile_rules` checks and compiles a plan's rules once, when a snapshot is
parsed or an engineer saves them (the admin calls the same function, so what it accepts is
exactly what every SDK can evaluate); :func:`match` then finds the first rule a unit's
attributes satisfy.

Never raising on attributes: an attribute that is missing, null, of another type than the
condition compares, too long to match, or not a version, makes that condition false. A
condition is never true by a type error.

Regular expressions are RE2's (``google-re2``): matching takes time linear in the input, so a
pattern saved in the admin cannot stall every SDK's request path (Python's ``re`` backtracks:
``a*a*a*b`` takes ~0.8 s on 256 characters). Patterns are capped at
:data:`~turnout.contract.MAX_REGEX_LENGTH` characters, inputs at
:data:`~turnout.contract.MAX_MATCH_INPUT`.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from turnout.contract import (
    COHORT_PATTERN,
    MAX_ATTRIBUTE_KEY_LENGTH,
    MAX_ATTRIBUTES,
    MAX_CONDITIONS,
    MAX_MATCH_INPUT,
    MAX_REGEX_LENGTH,
    MAX_RULE_NAME_LENGTH,
    MAX_RULE_VALUES,
    MAX_RULES,
    NUMERIC_OPERATORS,
    OPERATORS,
    RULE_RESULTS,
    SEMVER_OPERATORS,
)

Attributes = Mapping[str, Any]
Check = Callable[[Attributes], bool]

EXCLUDE = "exclude"
INCLUDE = "include"
COHORT = "cohort"
_COHORT_NAME = re.compile(COHORT_PATTERN)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a str holds a surrogate only unpaired


class RuleError(ValueError):
    """A rule that cannot be evaluated; ``message`` names the rule (its position and name)
    and ``index`` is its position (0-based), ``field`` the part at fault."""

    def __init__(self, message: str, *, index: int | None = None, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.field = field


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule: ``test`` (every condition at once), its result and, for ``cohort``,
    the cohort's name."""

    name: str
    test: Check
    result: str
    cohort: str


def _always(a: Attributes) -> bool:
    return True


def _all(checks: tuple[Check, ...]) -> Check:
    """One test for a rule's conditions: a single condition is its own test (one call per
    rule on the request path), several are tried in order until one fails."""
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]

    def every(a: Attributes) -> bool:
        for check in checks:
            if not check(a):
                return False
        return True

    return every


def valid_cohort(name: Any) -> bool:
    """Whether ``name`` may name a cohort (:data:`~turnout.contract.COHORT_PATTERN`)."""
    return isinstance(name, str) and _COHORT_NAME.fullmatch(name) is not None


# --- segments (guardrails per segment) -------------------------------------------------------

#: Segment dimensions a plan may declare, and the longest segment value (a label).
MAX_SEGMENT_DIMENSIONS = 3
MAX_SEGMENT_VALUE = 64


def segment_value(value: Any) -> str | None:
    """An attribute as a segment value: strings as they are, booleans ``true`` / ``false``,
    numbers as JSON writes them; None for anything else (absent, null, a container, NaN, a
    huge integer) or a string that is empty, over :data:`MAX_SEGMENT_VALUE` characters or
    holds a NUL or a lone surrogate, which the server cannot store (those count in no segment,
    only in the population)."""
    if isinstance(value, str):
        storable = "\x00" not in value and _LONE_SURROGATE.search(value) is None
        return value if 0 < len(value) <= MAX_SEGMENT_VALUE and storable else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**15 else None
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)  # as JSON writes it
    return None


def segment_values(dimensions: tuple[str, ...], attributes: Any) -> dict[str, str]:
    """A decision's segment value per declared dimension its attributes have (what its
    outcome carries); empty when they are not a mapping."""
    if not isinstance(attributes, Mapping):
        return {}
    found = {}
    for name in dimensions[:MAX_SEGMENT_DIMENSIONS]:
        value = segment_value(attributes.get(name))
        if value is not None:
            found[name] = value
    return found


# --- scalars ---------------------------------------------------------------------------------


# A tuple, not ``int | float``: the union is built anew on every call, a third of a check.
_NUMBER = (int, float)


def _is_number(value: Any) -> bool:
    # bool is an int in Python, but True is not 1 to a rule.
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    """A number a rule may compare with: finite, and within a double's range (JSON's 1e400
    written as digits is a Python int that ``math.isfinite`` cannot take: OverflowError)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _kind(value: Any) -> str | None:
    """The JSON scalar type a rule compares: ``string``, ``number``, ``boolean`` (or None)."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    return None


def attribute_problems(attributes: Any) -> list[tuple[str, str]]:
    """What the server refuses in a decision's attributes, as (field, message): not an
    object, more than :data:`~turnout.contract.MAX_ATTRIBUTES`, a name that is empty or over
    :data:`~turnout.contract.MAX_ATTRIBUTE_KEY_LENGTH` characters, a value that is not a JSON
    scalar. The SDK refuses nothing: it matches no condition on such attributes."""
    if not isinstance(attributes, Mapping):
        return [
            ("attributes", f"Expected an object of attributes, got {type(attributes).__name__}.")
        ]
    problems: list[tuple[str, str]] = []
    if len(attributes) > MAX_ATTRIBUTES:
        problems.append(
            ("attributes", f"At most {MAX_ATTRIBUTES} attributes, got {len(attributes)}.")
        )
    for name, value in attributes.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_ATTRIBUTE_KEY_LENGTH:
            shown = str(name)[:MAX_ATTRIBUTE_KEY_LENGTH]
            problems.append(
                (
                    "attributes",
                    f"An attribute name is 1 to {MAX_ATTRIBUTE_KEY_LENGTH} characters: "
                    f"{shown!r}{'...' if len(str(name)) > MAX_ATTRIBUTE_KEY_LENGTH else ''}.",
                )
            )
        elif value is not None and _kind(value) is None:
            problems.append(
                (
                    f"attributes.{name}",
                    f"An attribute is a string, number, boolean or null, not {type(value).__name__}.",
                )
            )
        if len(problems) >= 10:
            break  # enough to fix; a hostile body does not get a long answer
    return problems


# --- semantic versions -------------------------------------------------------------------------

# SemVer 2.0.0's own expression (semver.org), identifiers separated by dots, so no two parts
# of it can match the same characters: matching is linear in the (capped) input.
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?"
)
SemverKey = tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]
_versions: dict[str, SemverKey | None] = {}
_VERSIONS_CACHED = 4096


def semver_key(text: Any) -> SemverKey | None:
    """A sortable key for a SemVer 2.0.0 string (precedence as the spec says: a pre-release
    sorts before its release, its identifiers compared numerically or in ASCII order, build
    metadata ignored), or None for anything else."""
    if not isinstance(text, str) or len(text) > MAX_MATCH_INPUT:
        return None
    key = _versions.get(text, False)
    if key is not False:
        return key  # type: ignore[return-value]
    found = _SEMVER.fullmatch(text)
    if found is None:
        key = None
    else:
        major, minor, patch, pre = found.groups()
        if pre is None:
            key = (int(major), int(minor), int(patch), 1, ())
        else:
            ids = tuple(
                (0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split(".")
            )
            key = (int(major), int(minor), int(patch), 0, ids)
    # A handful of app versions in practice; bounded whatever callers send.
    if len(_versions) >= _VERSIONS_CACHED:
        _versions.clear()
    _versions[text] = key
    return key


# --- regular expressions -----------------------------------------------------------------------


def _re2() -> Any:
    import re2  # type: ignore[import-not-found,unused-ignore]  # google-re2: a C++ extension

    return re2


def compile_regex(pattern: str) -> Callable[[str], bool]:
    """A function telling whether RE2 ``pattern`` occurs in a string (search, not full
    match: anchor with ``^`` and ``$``). Raises :class:`RuleError` for a pattern RE2 refuses
    or one above :data:`~turnout.contract.MAX_REGEX_LENGTH` characters."""
    if len(pattern) > MAX_REGEX_LENGTH:
        raise RuleError(f"the pattern is {len(pattern)} characters, over {MAX_REGEX_LENGTH}")
    re2 = _re2()
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    options.never_capture = True
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise RuleError(f"the pattern does not compile: {detail}") from None
    regexp = getattr(compiled, "_regexp", None)
    unanchored = getattr(getattr(getattr(re2, "_re2", None), "RE2", None), "Anchor", None)
    if regexp is not None and unanchored is not None:
        # The compiled RE2 object itself: the package's re-like wrapper re-encodes and maps
        # offsets back on every call (~5 us); one Match over the UTF-8 bytes is ~0.6 us.
        anchor = unanchored.UNANCHORED
        raw_match = regexp.Match

        def found(text: str) -> bool:
            data = text.encode("utf-8", "surrogatepass")
            return bool(raw_match(anchor, data, 0, len(data))[0][0] >= 0)

        return found
    search = compiled.search  # pragma: no cover - a google-re2 without the internals above
    return lambda text: search(text) is not None  # pragma: no cover


# --- conditions --------------------------------------------------------------------------------


def _condition(data: Any, where: str) -> Check:
    """One condition, checked and compiled. Raises :class:`RuleError` (``where`` prefixes the
    message)."""
    if not isinstance(data, Mapping):
        raise RuleError(f"{where}: expected an object with 'attribute' and 'op'")
    name = data.get("attribute")
    if not isinstance(name, str) or not name or len(name) > MAX_ATTRIBUTE_KEY_LENGTH:
        raise RuleError(
            f"{where}: 'attribute' must be a name of 1 to {MAX_ATTRIBUTE_KEY_LENGTH} characters",
            field="attribute",
        )
    op = data.get("op")
    if op not in OPERATORS:
        raise RuleError(
            f"{where}: unknown operator {op!r} (one of {', '.join(sorted(OPERATORS))})",
            field="op",
        )
    if op == "exists":

        def exists(a: Attributes) -> bool:
            return a.get(name) is not None

        return exists
    if op in ("in", "not_in"):
        return _membership(name, op, data.get("values"), where)
    if "value" not in data:
        raise RuleError(f"{where}: {op} needs a 'value'", field="value")
    value = data["value"]
    if op == "equals":
        return _equals(name, value, where)
    if op in NUMERIC_OPERATORS:
        return _numeric(name, op, value, where)
    if op in SEMVER_OPERATORS:
        return _semver(name, op, value, where)
    return _regex(name, value, where)


def _equals(name: str, value: Any, where: str) -> Check:
    kind = _kind(value)
    if kind is None or (kind == "number" and not _finite(value)):
        raise RuleError(f"{where}: equals compares a string, number or boolean", field="value")
    if kind == "boolean":

        def same_boolean(a: Attributes) -> bool:
            return a.get(name) is value

        return same_boolean
    if kind == "string":

        def same_string(a: Attributes) -> bool:
            v = a.get(name)
            return isinstance(v, str) and v == value

        return same_string

    def same_number(a: Attributes) -> bool:
        v = a.get(name)
        return isinstance(v, _NUMBER) and not isinstance(v, bool) and v == value

    return same_number


def _membership(name: str, op: str, values: Any, where: str) -> Check:
    if not isinstance(values, list | tuple) or not values:
        raise RuleError(f"{where}: {op} needs 'values', a non-empty list", field="values")
    if len(values) > MAX_RULE_VALUES:
        raise RuleError(
            f"{where}: {len(values)} values, over the cap of {MAX_RULE_VALUES}", field="values"
        )
    strings: set[str] = set()
    numbers: set[float] = set()
    booleans: set[bool] = set()
    for value in values:
        kind = _kind(value)
        if kind == "string":
            strings.add(value)
        elif kind == "boolean":
            booleans.add(value)
        elif kind == "number" and _finite(value):
            numbers.add(value)
        else:
            raise RuleError(
                f"{where}: {op} lists strings, numbers or booleans, not {value!r}", field="values"
            )
    by_type = (frozenset(strings), frozenset(booleans), frozenset(numbers))
    fs, fb, fn = by_type

    # The attribute's type must be one the list holds: a number is never "not in" a list of
    # strings, it is of the wrong type (no match).
    if op == "in":

        def member(a: Attributes) -> bool:
            v = a.get(name)
            if isinstance(v, str):
                return v in fs
            if isinstance(v, bool):
                return v in fb
            return isinstance(v, _NUMBER) and v in fn

        return member

    def non_member(a: Attributes) -> bool:
        v = a.get(name)
        if isinstance(v, str):
            return bool(fs) and v not in fs
        if isinstance(v, bool):
            return bool(fb) and v not in fb
        return isinstance(v, _NUMBER) and bool(fn) and v not in fn

    return non_member


def _numeric(name: str, op: str, value: Any, where: str) -> Check:
    if not _is_number(value) or not _finite(value):
        raise RuleError(f"{where}: {op} compares with a finite number", field="value")
    bound = value

    # One closure per operator, each written out: this runs on the request path.
    if op == "lt":

        def lt(a: Attributes) -> bool:
            v = a.get(name)
            return isinstance(v, _NUMBER) and not isinstance(v, bool) and v < bound

        return lt
    if op == "lte":

        def lte(a: Attributes) -> bool:
            v = a.get(name)
            return isinstance(v, _NUMBER) and not isinstance(v, bool) and v <= bound

        return lte
    if op == "gt":

        def gt(a: Attributes) -> bool:
            v = a.get(name)
            return isinstance(v, _NUMBER) and not isinstance(v, bool) and v > bound

        return gt

    def gte(a: Attributes) -> bool:
        v = a.get(name)
        return isinstance(v, _NUMBER) and not isinstance(v, bool) and v >= bound

    return gte


def _semver(name: str, op: str, value: Any, where: str) -> Check:
    bound = semver_key(value)
    if bound is None:
        raise RuleError(
            f"{where}: {op} compares with a semantic version such as '2.4.0' or '2.4.0-beta.1'",
            field="value",
        )
    compare: Callable[[SemverKey, SemverKey], bool] = {
        "semver_eq": operator.eq,
        "semver_lt": operator.lt,
        "semver_lte": operator.le,
        "semver_gt": operator.gt,
        "semver_gte": operator.ge,
    }[op]

    versions = _versions

    def version(a: Attributes) -> bool:
        v = a.get(name)
        # The parsed version from the cache when there (app versions repeat), parsed once else.
        key = versions.get(v) if isinstance(v, str) else None
        if key is None:
            key = semver_key(v)
        return key is not None and compare(key, bound)

    return version


def _regex(name: str, value: Any, where: str) -> Check:
    if not isinstance(value, str) or not value:
        raise RuleError(f"{where}: regex needs a pattern (a string)", field="value")
    try:
        found = compile_regex(value)
    except RuleError as exc:
        raise RuleError(f"{where}: {exc.message}", field="value") from None

    def matches(a: Attributes) -> bool:
        v = a.get(name)
        return isinstance(v, str) and len(v) <= MAX_MATCH_INPUT and found(v)

    return matches


# --- rules -------------------------------------------------------------------------------------


def rule_label(index: int, data: Any) -> str:
    """How messages name a rule: ``rule 2 ("staff")``, 1-based as the admin lists them."""
    name = data.get("name") if isinstance(data, Mapping) else None
    return f'rule {index + 1} ("{name}")' if isinstance(name, str) and name else f"rule {index + 1}"


def compile_rule(data: Any, index: int) -> Rule:
    """One rule: ``{"name", "when": [conditions], "then": "exclude" | "include" | "cohort",
    "cohort": name}``. Raises :class:`RuleError` naming the rule."""
    label = rule_label(index, data)

    def refuse(message: str, field: str) -> RuleError:
        return RuleError(f"{label}: {message}", index=index, field=field)

    if not isinstance(data, Mapping):
        raise refuse("expected an object with 'when' and 'then'", "rule")
    name = data.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_RULE_NAME_LENGTH:
        raise refuse(f"'name' must be text of at most {MAX_RULE_NAME_LENGTH} characters", "name")
    when = data.get("when", [])
    if not isinstance(when, list | tuple):
        raise refuse("'when' must be a list of conditions", "when")
    if len(when) > MAX_CONDITIONS:
        raise refuse(f"{len(when)} conditions, over the cap of {MAX_CONDITIONS}", "when")
    result = data.get("then")
    if result not in RULE_RESULTS:
        raise refuse(f"'then' must be one of {', '.join(sorted(RULE_RESULTS))}", "then")
    cohort = data.get("cohort") or ""
    if result == COHORT:
        if not valid_cohort(cohort):
            raise refuse(
                "a cohort rule names its cohort: lowercase letters, digits, '_' and '-' "
                "(at most 63), e.g. 'internal'",
                "cohort",
            )
    elif cohort:
        raise refuse(f"only a cohort rule names a cohort, not {result}", "cohort")
    checks = []
    for position, condition in enumerate(when):
        try:
            checks.append(_condition(condition, f"condition {position + 1}"))
        except RuleError as exc:
            raise refuse(exc.message, f"when.{position}.{exc.field or 'op'}") from None
    return Rule(name=name, test=_all(tuple(checks)), result=str(result), cohort=cohort)


def compile_rules(data: Any) -> tuple[Rule, ...]:
    """A plan's rules, in order. Raises :class:`RuleError` for the first one that cannot be
    evaluated, or for a list above :data:`~turnout.contract.MAX_RULES`."""
    if data is None:
        return ()
    if not isinstance(data, list | tuple):
        raise RuleError("rules: expected a list", field="rules")
    if len(data) > MAX_RULES:
        raise RuleError(f"{len(data)} rules, over the cap of {MAX_RULES}", field="rules")
    return tuple(compile_rule(rule, index) for index, rule in enumerate(data))


def rule_problems(data: Any) -> list[RuleError]:
    """Every rule that cannot be evaluated (not only the first), for a form to show."""
    if not isinstance(data, list | tuple):
        return [RuleError("rules: expected a list", field="rules")]
    problems = []
    if len(data) > MAX_RULES:
        problems.append(RuleError(f"{len(data)} rules, over the cap of {MAX_RULES}", field="rules"))
    for index, rule in enumerate(data):
        try:
            compile_rule(rule, index)
        except RuleError as exc:
            problems.append(exc)
    return problems


_NO_ATTRIBUTES: Attributes = {}


def match(rules: tuple[Rule, ...], attributes: Attributes | None) -> Rule | None:
    """The first rule whose every condition holds for ``attributes``, or None.

    Attributes that are not a mapping, or more than :data:`~turnout.contract.MAX_ATTRIBUTES`
    of them, count as none (the server refuses those with a 400; an SDK never raises, it
    matches nothing a condition needs an attribute for). decide()'s request path calls this
    for every unit of a plan with rules: one call, a dict checked by its class first."""
    if (attributes.__class__ is not dict and not isinstance(attributes, Mapping)) or len(
        attributes
    ) > MAX_ATTRIBUTES:
        attributes = _NO_ATTRIBUTES
    for rule in rules:
        if rule.test(attributes):
            return rule
    return None
