"""What a provider connection or an alert channel may name: which environment variables (their
values leave the process as credentials) and which hosts (where a provider key is sent).

Whoever may edit a connection chooses both, and every process that calls a model (the shadow
workers, and every application using ``complete()``) would send the named variable's value as
a bearer token to the named host. So the names are allowlisted by pattern, Turnout's own
settings are never nameable, and a base URL's host must be one the operator listed; cloud
metadata and link-local addresses never are.

Pure: rules are parsed from settings at start (``parse_var_patterns``, ``parse_host_rules``)
and applied to plain strings. ``connection_problems`` / ``channel_problems`` read the current
settings: the models call them when a row is saved, the snapshot builder, the shadow worker and
the alert outbox again when a row is used (a row saved before a rule existed or was narrowed).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

# The kind a refused connection's arm carries in the snapshot: no adapter serves it, so an
# SDK's complete() fails at once (a non-transient error) without reading a key or calling out.
REFUSED_KIND = "refused"

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATTERN = re.compile(r"[A-Za-z0-9_*?]+")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# What inet_aton may read as an IPv4 address ("2852039166", "0xa9.0xfe.0xa9.0xfe", "127.1"):
# the resolver connects to those addresses, so they are judged as the address they mean.
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")

# Cloud instance metadata services (AWS, GCP, Azure, Oracle, Alibaba, ...): never a provider.
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What no listed network may overlap: link-local, multicast, 0/8, 240/4 (see ``_never``).
_NEVER_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/3",
        "::/128",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_LOOPBACK_NAMES = ("localhost", ".localhost")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- variable names ---------------------------------------------------------------------


def parse_var_patterns(setting: str, entries: Sequence[str]) -> tuple[str, ...]:
    """Glob patterns of variable names (``*`` and ``?``); ImproperlyConfigured on anything else."""
    for entry in entries:
        if not _PATTERN.fullmatch(entry):
            raise ImproperlyConfigured(
                f"{setting}: {entry!r} is not a variable-name pattern "
                "(letters, digits, '_', '*' and '?')"
            )
    return tuple(entries)


def var_problem(
    name: str, *, allowed: Sequence[str], reserved: Sequence[str], setting: str
) -> str | None:
    """Why ``name`` may not be named, or None. Reserved patterns win over allowed ones."""
    if not ENV_NAME.fullmatch(name):
        return f"{name!r} is not an environment variable name"
    if any(fnmatchcase(name, p) for p in reserved):
        return f"{name} is one of Turnout's own settings: its value is never sent anywhere"
    if not any(fnmatchcase(name, p) for p in allowed):
        shown = ", ".join(allowed) or "nothing"
        return f"{name} is not allowed here: {setting} allows {shown}"
    return None


# --- hosts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostRules:
    """The hosts a base URL may name. ``any_name``: every host name and public address (``*``);
    private and loopback addresses (and ``localhost``) only when listed."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()
    any_name: bool = False
    setting: str = "TURNOUT_PROVIDER_HOSTS"


def _embedded_v4(address: Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through (mapped, 6to4, Teredo, NAT64)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _never(address: Address) -> bool:
    for a in (address, *_embedded_v4(address)):
        if a in METADATA_ADDRESSES or a.is_link_local or a.is_multicast or a.is_unspecified:
            return True
        if isinstance(a, ipaddress.IPv4Address) and a.is_reserved:  # 240/4, broadcast
            return True
        if isinstance(a, ipaddress.IPv6Address) and a.is_site_local:
            return True
    return False


def _public(address: Address) -> bool:
    return all(a.is_global for a in (address, *_embedded_v4(address)))


def _address(host: str) -> Address | None:
    """The address ``host`` (as a URL gives it, brackets removed) stands for, if it is one."""
    try:
        return ipaddress.ip_address(unquote(host))
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def parse_host_rules(setting: str, entries: Sequence[str]) -> HostRules:
    """``*``, ``name``, ``*.suffix``, an address or a network (CIDR); ImproperlyConfigured on an
    entry that is none of these or that names an address no provider may have."""
    names: set[str] = set()
    suffixes: list[str] = []
    networks: list[Network] = []
    any_name = False
    for raw in entries:
        entry = raw.strip().lower()
        if entry.endswith(".") and not entry.endswith("*."):
            entry = entry[:-1]  # the root's dot: "api.openai.com." is api.openai.com
        if entry == "*":
            any_name = True
            continue
        if entry.startswith("*.") and _HOSTNAME.fullmatch(entry[2:]):
            suffixes.append(entry[1:])
            continue
        try:
            network = ipaddress.ip_network(entry.strip("[]"), strict=True)
        except ValueError:
            network = None
        if network is not None:
            if any(
                network.overlaps(n) for n in _NEVER_NETWORKS if n.version == network.version
            ) or any(a in network for a in METADATA_ADDRESSES):
                raise ImproperlyConfigured(
                    f"{setting}: {raw!r} includes link-local, metadata or other addresses "
                    "no provider may have"
                )
            networks.append(network)
            continue
        if _NUMERIC_HOST.fullmatch(entry) or not _HOSTNAME.fullmatch(entry):
            raise ImproperlyConfigured(
                f"{setting}: {raw!r} is not a host name, '*.domain', an address or a network"
            )
        if entry in METADATA_NAMES:
            raise ImproperlyConfigured(f"{setting}: {raw!r} is a cloud metadata service")
        names.add(entry)
    return HostRules(frozenset(names), tuple(suffixes), tuple(networks), any_name, setting)


def url_problem(url: str, rules: HostRules) -> str | None:
    """Why a provider may not be reached at ``url``, or None. Empty: the vendor's default."""
    if not url:
        return None
    if any(c.isspace() or ord(c) < 32 or c == "\\" for c in url):
        return "the URL has spaces, control characters or backslashes"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"the URL does not parse: {exc}"
    if parts.scheme not in ("http", "https"):
        return "the URL must start with http:// or https://"
    if "@" in parts.netloc:
        # user:password@host is where URL parsers disagree about the host: never allowed.
        return "the URL must not carry a user name or password"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "the URL names no host"
    problem = host_problem(host, rules)
    if problem is None and not _same_host_for_httpx(url, host):
        return "the URL's host is read differently by the HTTP client"
    return problem


def host_problem(host: str, rules: HostRules) -> str | None:
    host = host.lower().rstrip(".")
    listed = f"not in {rules.setting}"
    address = _address(host)
    if address is not None:
        if _never(address):
            return f"{host} is a link-local, metadata or reserved address: never allowed"
        if any(address in n for n in rules.networks if n.version == address.version):
            return None
        if rules.any_name and _public(address):
            return None
        if not _public(address):
            return f"{host} is a private or loopback address {listed}"
        return f"{host} is {listed}"
    if "%" in host or not _HOSTNAME.fullmatch(host):
        return f"{host!r} is not a host name (write international names in punycode)"
    if host in METADATA_NAMES:
        return f"{host} is a cloud metadata service: never allowed"
    if host in rules.names or any(host.endswith(s) for s in rules.suffixes):
        return None
    loopback = host == _LOOPBACK_NAMES[0] or host.endswith(_LOOPBACK_NAMES[1])
    if rules.any_name and not loopback:
        return None
    return f"{host} is {listed}"


def _same_host_for_httpx(url: str, host: str) -> bool:
    """The vendor SDKs send through httpx: its reading of the host must be ours."""
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx comes with the SDK
        return True
    try:
        theirs = httpx.URL(url).host
    except Exception:  # any parse failure: refuse rather than guess
        return False
    return unquote(theirs).lower().rstrip(".") == unquote(host).lower()


# --- rows, with the current settings ------------------------------------------------------


def _settings() -> Any:
    from django.conf import settings

    return settings


def provider_key_problem(name: str) -> str | None:
    s = _settings()
    return var_problem(
        name,
        allowed=s.TURNOUT_PROVIDER_KEY_VARS,
        reserved=s.TURNOUT_RESERVED_VARS,
        setting="TURNOUT_PROVIDER_KEY_VARS",
    )


def alert_var_problem(name: str) -> str | None:
    s = _settings()
    return var_problem(
        name,
        allowed=s.TURNOUT_ALERT_VARS,
        reserved=s.TURNOUT_RESERVED_VARS,
        setting="TURNOUT_ALERT_VARS",
    )


def connection_problems(*, api_key_env: str, base_url: str) -> dict[str, str]:
    """Field -> why, for a provider connection under the current settings (empty: allowed)."""
    problems = {}
    if api_key_env and (problem := provider_key_problem(api_key_env)):
        problems["api_key_env"] = problem
    if problem := url_problem(base_url, _settings().TURNOUT_PROVIDER_HOST_RULES):
        problems["base_url"] = problem
    return problems


def channel_problems(*, url_env: str, secret_env: str) -> dict[str, str]:
    """Field -> why, for an alert channel's variables under the current settings."""
    named = (("url_env", url_env), ("secret_env", secret_env))
    return {f: p for f, name in named if name and (p := alert_var_problem(name))}


def summary(problems: dict[str, str]) -> str:
    return "; ".join(f"{field}: {why}" for field, why in problems.items())
