"""Which config values are secret, and how to keep them out of logs, error messages and reprs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# Replica settings whose values must never reach a log line, an error message or a repr.
SECRET_KEYS = frozenset(
    {
        "secret-access-key",
        "account-key",
        "password",
        "sas-token",
        "sse-customer-key",
        "token",
        "seed",
        "nkey",
        "jwt",
        "webdav-password",
    }
)
REDACTED = "REDACTED"
_SECRET_QUERY_KEYS = {k.replace("-", "") for k in SECRET_KEYS} | {
    "sig",
    "secret",
    "secretkey",
    "accesskeysecret",
}


def redact_url(url: str) -> str:
    """The URL with any userinfo password and secret-looking query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + REDACTED
        netloc = f"{userinfo}@{hostport}"
    query = parts.query
    if query:
        items = []
        for k, v in parse_qsl(query, keep_blank_values=True):
            compact = re.sub(r"[-_]", "", k.lower())
            items.append(f"{k}={REDACTED if compact in _SECRET_QUERY_KEYS else v}")
        query = "&".join(items)
    out = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else parts.path
    if query:
        out += f"?{query}"
    if parts.fragment:
        out += f"#{parts.fragment}"
    return out


def redact_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of replica `settings` with secret values and a URL's secrets replaced by REDACTED."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if k in SECRET_KEYS and v not in (None, ""):
            out[k] = REDACTED
        elif k == "url" and isinstance(v, str):
            out[k] = redact_url(v)
        else:
            out[k] = v
    return out
