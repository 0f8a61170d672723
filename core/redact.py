"""Central redaction of secrets before any tracker sees hyper-parameters or configs.

Three rules, applied recursively to mappings, sequences and strings without touching the caller's
objects:

* a key that names a secret (``hub_token``, ``api_key``, ``AWS_SECRET_ACCESS_KEY``, ``db_password``,
  ``credentials``, ...) has its value replaced by :data:`REDACTED` (token-*ids* such as
  ``pad_token_id`` and special-token strings such as ``eos_token`` are not secrets);
* credentials inside URLs (``https://user:pass@host``, ``?token=...``) are masked;
* the value of every secret environment variable that is set (a tracker's declared secret variables
  and any variable whose name names a secret) is masked wherever it appears in a string.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "is_secret_key", "redact", "redact_text", "redacted_copy", "secret_env_values"]

REDACTED = "<redacted>"

_SECRET_WORDS = frozenset(
    {"secret", "secrets", "password", "passwd", "pwd", "passphrase", "credential", "credentials",
     "apikey", "accesskey", "privatekey", "authorization", "cookie", "bearer"}
)
_KEY_QUALIFIERS = frozenset(
    {"api", "access", "secret", "private", "auth", "license", "account", "encryption", "signing",
     "master", "client", "service", "subscription", "session", "ssh", "write", "read", "user"}
)
_SPECIAL_TOKENS = frozenset(
    {"pad_token", "bos_token", "eos_token", "unk_token", "sep_token", "cls_token", "mask_token",
     "additional_special_tokens", "decoder_start_token"}
)
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/@:\s]*):(?P<pw>[^/@\s]+)@")
_URL_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:[A-Za-z0-9_\-]*(?:token|secret|password|passwd|api_?key|access_?key|signature|sig|"
    r"auth|key)))=(?P<value>[^&#\s]+)",
    re.IGNORECASE,
)
_MIN_ENV_SECRET_LEN = 6
#: Environment variables whose names look like secrets but hold none: the shell's working directories
#: ("pwd" is a secret word), whose values prefix every relative path.
_NOT_SECRET_ENV = frozenset({"PWD", "OLDPWD"})


def _words(key: str) -> list[str]:
    return [w.lower() for w in _WORD_SPLIT.split(key) if w]


def is_secret_key(key: object) -> bool:
    """Whether a mapping key or variable name names a secret value."""
    if not isinstance(key, str):
        return False
    if key.lower() in _SPECIAL_TOKENS:
        return False
    words = _words(key)
    if not words:
        return False
    if any(word in _SECRET_WORDS for word in words):
        return True
    last = words[-1]
    if last.endswith("token"):  # hub_token, authtoken; not token counts (max_new_tokens)
        return True
    if last in ("key", "keys") and len(words) > 1 and words[-2] in _KEY_QUALIFIERS:
        return True
    return last in ("auth", "sas")


def secret_env_values(extra_names: Iterable[str] = ()) -> list[str]:
    """Values of set environment variables that hold secrets (longest first)."""
    names = set(extra_names)
    names.update(name for name in os.environ if is_secret_key(name) and name not in _NOT_SECRET_ENV)
    values = {os.environ[n] for n in names if len(os.environ.get(n, "")) >= _MIN_ENV_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, env_secrets: Iterable[str] = ()) -> str:
    """Mask URL credentials and known secret values inside a string."""
    for value in env_secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    return _URL_QUERY_SECRET.sub(lambda m: f"{m['key']}={REDACTED}", text)


def redact(value: Any, env_secrets: Iterable[str] | None = None) -> Any:
    """A redacted copy of ``value`` (mappings, lists, tuples and strings; other values as they are).

    ``env_secrets`` defaults to :func:`secret_env_values`.
    """
    secrets = list(secret_env_values() if env_secrets is None else env_secrets)
    return _redact(value, secrets)


def redacted_copy(obj: Any, env_secrets: Iterable[str] | None = None) -> Any:
    """A shallow copy of an arguments object (e.g. ``TrainingArguments``) whose secret-named fields
    and credential-bearing strings are masked; ``obj`` itself is not modified. Objects without a
    ``__dict__`` are returned as they are."""
    import copy

    fields = getattr(obj, "__dict__", None)
    if not isinstance(fields, dict):
        return obj
    secrets = list(secret_env_values() if env_secrets is None else env_secrets)
    changes = {}
    for key, value in fields.items():
        masked = _redact({key: value}, secrets)[key] if isinstance(value, (str, Mapping, list, tuple)) else value
        if masked is not value and masked != value:
            changes[key] = masked
    if not changes:
        return obj
    clone = copy.copy(obj)
    for key, value in changes.items():
        object.__setattr__(clone, key, value)
    return clone


_SPECIAL_TOKEN_VALUE = re.compile(r"^(<[^<>\s]{1,40}>|\[[A-Za-z_]{1,20}\]|<\|[^|\s]{1,40}\|>)$")


def _holds_secret(key: Any, value: Any) -> bool:
    """A secret-named key, unless its value is empty or a special-token string such as ``<image>``
    (model configs name those ``image_token``, ``boi_token``, ...)."""
    if value in (None, "", False) or not is_secret_key(key):
        return False
    return not (isinstance(value, str) and _SPECIAL_TOKEN_VALUE.match(value))


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, Mapping):
        return {
            key: REDACTED if _holds_secret(key, value[key]) else _redact(value[key], secrets)
            for key in value
        }
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(item, secrets) for item in value) if isinstance(value, list) \
            else tuple(_redact(item, secrets) for item in value)
    return value
