"""Which names are secret, and masking their values as ``***`` wherever a task is shown or logged.

One rule decides "is this name a secret": :func:`is_secret_name`. It covers header names
(``Authorization``, ``X-Api-Key``, ``Cookie``), query parameters (``api_key``, ``access_token``) and
body fields at any depth (``client_secret``, ``password``). Every view of a task (``Task.to_dict``:
the CLI, the REST API, the console) masks through :func:`mask_spec`; an API run's recorded answer is
scrubbed by ``core.http``, which asks the same rule. Only ``export`` (admin in the REST API) returns
the values, so that export → submit round-trips.

A masked value sent back unchanged — an edit in the console, a PATCH built from a GET — keeps the
stored secret (:func:`restore_spec`), so nobody has to know a secret to edit the rest of a task.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

MASK = "***"

SECRET_NAME = re.compile(
    r"^.*(?:authori[sz]ation|cookie|token|key|secret|passw(?:or)?d|pwd|auth(?!or)|credential|session|signature"
    r"|private).*$",
    re.IGNORECASE | re.DOTALL,
)
"""What makes a name a secret's name, anywhere in it (``X-Api-Key``, ``client_secret``); works with
``match``, ``search`` and ``fullmatch``."""

MASKED_SPEC_FIELDS = ("headers", "params", "data", "json", "kwargs")
"""Spec fields (as ``TaskSpec.to_dict`` spells them) whose secret-named entries are masked, and ``api_url``."""


def is_secret_name(name: object) -> bool:
    """Whether a header, query parameter or body field called ``name`` holds a secret."""
    return bool(SECRET_NAME.match(str(name)))


def mask_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """Copy ``headers`` with secret values replaced by ``***`` (``Bearer ***`` keeps the scheme)."""
    masked: dict[str, str] = {}
    for name, value in (headers or {}).items():
        name, value = str(name), str(value)
        if not is_secret_name(name):
            masked[name] = value
        elif "authorization" in name.lower() and " " in value.strip():
            masked[name] = f"{value.strip().split(None, 1)[0]} {MASK}"
        else:
            masked[name] = MASK
    return masked


def redact_url(url: str) -> str:
    """``url`` with the values of secret-named query parameters (``?api_key=…``) replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url
    params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if not any(is_secret_name(name) for name, _ in params):
        return url
    query = urllib.parse.urlencode([(name, MASK if is_secret_name(name) else value) for name, value in params],
                                   safe="*")
    return urllib.parse.urlunsplit(parts._replace(query=query))


def _looks_like_form(text: str) -> bool:
    return "=" in text and not any(char.isspace() for char in text.strip())


def _as_json(text: str) -> Any:
    """``text`` parsed, if it is a JSON object or array (a body given as a string); else None."""
    if not text.lstrip().startswith(("{", "[")) or len(text) > 1_000_000:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def mask_fields(value: Any) -> Any:
    """JSON data with the value of every secret-named key (at any depth) replaced by ``***``.

    A string that reads as a form body (``user=a&password=b``) has its secret-named fields masked too.
    """
    if isinstance(value, Mapping):
        return {key: MASK if is_secret_name(key) else mask_fields(item) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_fields(item) for item in value]
    if isinstance(value, str) and (parsed := _as_json(value)) is not None:
        masked = mask_fields(parsed)
        return value if masked == parsed else json.dumps(masked, ensure_ascii=False)
    if isinstance(value, str) and _looks_like_form(value):
        try:
            pairs = urllib.parse.parse_qsl(value, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            return value
        if any(is_secret_name(name) for name, _ in pairs):
            return urllib.parse.urlencode([(name, MASK if is_secret_name(name) else item) for name, item in pairs],
                                          safe="*")
    return value


def secret_field_values(value: Any) -> list[str]:
    """The values under secret-named keys in JSON data or a form body (strings and numbers, any depth)."""
    found: list[str] = []

    def collect(item: Any, secret: bool) -> None:
        if isinstance(item, Mapping):
            for key, inner in item.items():
                collect(inner, secret or is_secret_name(key))
        elif isinstance(item, list):
            for inner in item:
                collect(inner, secret)
        elif secret and isinstance(item, (str, int, float)) and not isinstance(item, bool):
            found.append(str(item))
        elif isinstance(item, str) and (parsed := _as_json(item)) is not None:
            collect(parsed, False)
        elif isinstance(item, str) and _looks_like_form(item):
            try:
                pairs = urllib.parse.parse_qsl(item, keep_blank_values=True, strict_parsing=True)
            except ValueError:
                return
            found.extend(inner for name, inner in pairs if is_secret_name(name))

    collect(value, False)
    return found


def mask_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec (``TaskSpec.to_dict``) as it may be shown: secret values in headers, URL query, query
    params, body (``data``/``json``, nested) and a registered task's ``kwargs`` replaced by ``***``."""
    shown = dict(spec)
    if "headers" in shown:
        shown["headers"] = mask_headers(shown["headers"])
    if "api_url" in shown:
        try:
            shown["api_url"] = redact_url(shown["api_url"])
        except ValueError:
            pass
    for name in ("params", "data", "json", "kwargs"):
        if name in shown:
            shown[name] = mask_fields(shown[name])
    return shown


def _is_mask(value: Any) -> bool:
    return isinstance(value, str) and value.strip().endswith(MASK)


def _restore(new: Any, old: Any, *, header: bool = False) -> Any:
    """``new`` with every masked value under a secret-named key that ``old`` also has taken from ``old``."""
    if isinstance(new, Mapping) and isinstance(old, Mapping):
        restored = {}
        for key, item in new.items():
            if key in old and is_secret_name(key) and _is_mask(item):
                restored[key] = old[key]
            else:
                restored[key] = _restore(item, old.get(key)) if not header else item
        return restored
    if isinstance(new, list) and isinstance(old, list):
        return [_restore(item, old[index]) if index < len(old) else item for index, item in enumerate(new)]
    if isinstance(new, str) and isinstance(old, str) and MASK in new and _looks_like_form(new):
        try:
            pairs = urllib.parse.parse_qsl(new, keep_blank_values=True, strict_parsing=True)
            stored = dict(urllib.parse.parse_qsl(old, keep_blank_values=True))
        except ValueError:
            return new
        return urllib.parse.urlencode([(name, stored[name] if name in stored and is_secret_name(name)
                                        and value == MASK else value) for name, value in pairs])
    return new


def _restore_url(new: str, old: str) -> str:
    try:
        parts, old_parts = urllib.parse.urlsplit(new), urllib.parse.urlsplit(old)
    except ValueError:
        return new
    if MASK not in urllib.parse.unquote(parts.query):
        return new
    stored = dict(urllib.parse.parse_qsl(old_parts.query, keep_blank_values=True))
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = urllib.parse.urlencode([(name, stored[name] if name in stored and is_secret_name(name) and value == MASK
                                     else value) for name, value in pairs])
    return urllib.parse.urlunsplit(parts._replace(query=query))


def restore_spec(changes: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """Spec ``changes`` with masked secrets (``***``, ``Bearer ***``) put back from the ``stored`` spec.

    What a viewer was shown, sent back unchanged, must not overwrite the secret with three stars.
    """
    restored = dict(changes)
    for name in (*MASKED_SPEC_FIELDS, "json_body"):
        was = stored.get("json" if name == "json_body" else name)
        if restored.get(name) is not None and was is not None:
            restored[name] = _restore(restored[name], was, header=name == "headers")
    if isinstance(restored.get("api_url"), str) and isinstance(stored.get("api_url"), str):
        restored["api_url"] = _restore_url(restored["api_url"], stored["api_url"])
    return restored
