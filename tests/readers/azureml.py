"""Read back what azureml-core's offline run "logged": outside an Azure ML job, ``Run.get_context()``
returns an ``_OfflineRun`` whose methods only print lines to stdout (this is the only offline mode the SDK
has; nothing is written to disk). Parse a captured stdout into metrics, tags and failures."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

_METRIC = re.compile(r"^Attempted to log (\w+) metric (.+?):\n(.*)$", re.M)
_TAGS = re.compile(r"^Attempted to set tags (\{.*\})$", re.M)
_FILE = re.compile(r"^Attempted to track file (.+?) at (.+)$", re.M)
_FAILED = re.compile(r"^Run failed with error code (\S+):\n(.*)$", re.M)


@dataclass
class OfflineLog:
    metrics: dict[str, list[Any]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # metric name -> scalar, image, table, ...
    files: dict[str, str] = field(default_factory=dict)  # uploaded name -> local path
    tags: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_stdout(text: str) -> OfflineLog:
    log = OfflineLog()
    for kind, name, value in _METRIC.findall(text):
        log.metrics.setdefault(name, []).append(_value(value))
        log.kinds[name] = kind
    log.files.update(dict(_FILE.findall(text)))
    for tags in _TAGS.findall(text):
        log.tags.update(ast.literal_eval(tags))
    log.failures = [details for _code, details in _FAILED.findall(text)]
    return log
