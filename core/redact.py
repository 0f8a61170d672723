"""Central redaction of secrets before any tracker sees hyper-parameters or configs.

Three rules, applied recursively to mappings, sequences and strings without touching the caller's
objects:

* a key that names a secret (``hub_token``, ``api_key``, ``AWS_SECRET_ACCESS_KEY``, ``db_password``,
  ``credentials``, ...) has its value replaced by :data:`REDACTED` (token-*ids* such as
  ``pad_token_id`` and special-token strings such as ``eos_token`` are not secrets);
* credentials inside URLs are masked: the whole user information of ``https://user:pass@host``,
  ``https://TOKEN@host`` or ``https://TOKEN:x-oauth-basic@host`` (a user name cannot be told from a
  token), up to the authority's last ``@``; only the ssh family keeps its login name
  (``ssh://git@host``, ``ssh://deploy:<redacted>@host``); and ``?token=...`` or ``#access_token=...``;
  ``user@host`` outside a URL (an e-mail address, ``git@host:org/repo``) is left alone;
* the value of every secret environment variable that is set (a tracker's declared secret variables
  and any variable whose name names a secret) is masked wherever it appears in a string.

Files a tracker uploads (checkpoints, an output directory) pass the same rules through
:func:`redacted_upload`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "REDACTED", "current_secrets", "declare_secret_names", "declared_secret_names", "is_secret_key", "redact", "redact_text", "redacted_copy", "redacted_file_text", "redacted_upload",
    "secret_env_values",
]

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
#: ``scheme://USERINFO@host``: the user information runs to the authority's last ``@`` (a raw ``@`` inside a
#: password or token does not end it, as in urllib)
_URL_USERINFO = re.compile(r"(?P<scheme>(?P<name>[A-Za-z][A-Za-z0-9+.\-]*)://)(?P<info>[^/?#\s]*)@")
#: Schemes whose user part is a login name, never a credential (ssh authenticates by key or prompt).
_USER_NAME_SCHEMES = frozenset({"ssh", "sftp", "scp", "git+ssh", "ssh+git"})
_URL_QUERY_SECRET = re.compile(
    r"(?P<key>[?&#](?:[A-Za-z0-9_\-]*(?:token|secret|password|passwd|api_?key|access_?key|signature|sig|"
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


_declared_secret_names: set[str] = set()


def declare_secret_names(names: Iterable[str]) -> None:
    """Register environment variables that hold secrets whatever their name (a tracker's declared secret
    variables register themselves when the tracker class is defined)."""
    _declared_secret_names.update(names)


def declared_secret_names() -> set[str]:
    """The secret variable names registered with :func:`declare_secret_names`."""
    return set(_declared_secret_names)


def current_secrets() -> list[str]:
    """The secret values to mask right now: those of every set environment variable whose name names a
    secret and of every secret variable a loaded tracker declares (longest first). The one function every
    part of tracklink asks."""
    return secret_env_values(_declared_secret_names)


def secret_env_values(extra_names: Iterable[str] = ()) -> list[str]:
    """Values of set environment variables that hold secrets (longest first): variables whose name names a
    secret, and ``extra_names``."""
    names = set(extra_names)
    names.update(name for name in os.environ if is_secret_key(name) and name not in _NOT_SECRET_ENV)
    values = {os.environ[n] for n in names if len(os.environ.get(n, "")) >= _MIN_ENV_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, env_secrets: Iterable[str] = ()) -> str:
    """Mask URL credentials and known secret values inside a string."""
    for value in env_secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    return _URL_QUERY_SECRET.sub(lambda m: f"{m['key']}={REDACTED}", text)


def _mask_userinfo(match: re.Match[str]) -> str:
    info = match["info"]
    if info in ("", REDACTED):
        return match[0]
    if match["name"].lower() in _USER_NAME_SCHEMES:  # a login name, and perhaps a password after it
        user, sep, _ = info.partition(":")
        return f"{match['scheme']}{user}:{REDACTED}@" if sep else match[0]
    # any other user part may be a token (https://TOKEN@, TOKEN:x-oauth-basic@, TOKEN:@): all of it goes
    return f"{match['scheme']}{REDACTED}@"


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


# -- files a tracker uploads ------------------------------------------------------------------------

#: Text files larger than this are uploaded as they are (checkpoint configs and states are far smaller).
MAX_REDACTED_FILE_BYTES = 16 * 2**20
_SNIFF_BYTES = 8192


def _upload_secrets(env_secrets: Iterable[str] | None) -> list[str]:
    return list(env_secrets) if env_secrets is not None else current_secrets()


def redacted_file_text(path: str | os.PathLike[str], env_secrets: Iterable[str] | None = None) -> str | None:
    """The masked text of a small UTF-8 text file when masking changes it, else ``None`` (binary, larger
    than :data:`MAX_REDACTED_FILE_BYTES`, unreadable, or nothing to mask).

    A JSON file has its secret-named keys masked (and is then re-serialised); every text file has URL
    credentials and the values of secret environment variables masked. ``env_secrets`` defaults to the
    set secret variables, the ones every loaded tracker declares included.
    """
    secrets = _upload_secrets(env_secrets)
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
            if b"\0" in head or os.fstat(handle.fileno()).st_size > MAX_REDACTED_FILE_BYTES:
                return None
            text = (head + handle.read()).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    clean = text
    try:
        data = json.loads(text)
    except ValueError:
        pass
    else:
        masked = _redact(data, secrets)
        if masked != data:
            clean = json.dumps(masked, indent=2)
    clean = redact_text(clean, secrets)
    return clean if clean != text else None


def _mirror(source: Path, target: Path) -> None:
    """Put ``source``'s content at ``target`` without copying it when the file system allows."""
    try:
        os.link(source, target)
    except OSError:  # another file system, or no hard links
        try:
            os.symlink(source.resolve(), target)
        except OSError:
            import shutil  # lazy: only for an upload (stdlib, slow to import)

            shutil.copy2(source, target)


@contextlib.contextmanager
def redacted_upload(path: str | os.PathLike[str], env_secrets: Iterable[str] | None = None) -> Iterator[Path]:
    """Context manager yielding what to upload in place of ``path`` (a file or a directory).

    When no file needs masking (see :func:`redacted_file_text`), it yields ``path`` itself. Otherwise it
    yields a temporary copy with the same name, removed on exit: masked files are rewritten, the others
    are linked (hard link, else symbolic link) so large weights are not copied. Read everything the upload
    needs inside the ``with`` block; SDKs that read files later must copy them first.
    """
    source = Path(path)
    secrets = _upload_secrets(env_secrets)
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    masked = {file: text for file in files if (text := redacted_file_text(file, secrets)) is not None}
    if not masked:
        yield source
        return
    import tempfile  # lazy: only for an upload (stdlib, slow to import)

    with tempfile.TemporaryDirectory(prefix="tracklink-redacted-") as scratch:
        root = Path(scratch) / source.name
        for file in files:
            target = root / file.relative_to(source)  # a single file: root itself
            target.parent.mkdir(parents=True, exist_ok=True)
            if file in masked:
                target.write_text(masked[file], encoding="utf-8")
            else:
                _mirror(file, target)
        yield root
