"""``report_to`` resolution: which tracker plugins a training run activates, and why the others not.

Accepted values: ``"all"``, ``"none"``, one name, a comma-separated string, or a list of these; an
explicit ``None`` means ``"none"``. When the argument is not given, ``TRACKLINK_REPORT_TO`` supplies it
(default ``"all"``). Rules:

* ``"all"`` picks every installed, ready, not-disabled tracker that allows automatic selection, in
  :data:`tracklink.registry.BUILTIN_ORDER` then third-party trackers by name; every other one gets a
  skip reason. ``"all"`` may be combined with names, which are then added explicitly.
* an explicit name must be known (:class:`UnknownTrackerError`, with a close-match suggestion) and
  installed (:class:`TrackerUnavailableError`, with the install command). It is used even when not
  "ready" (you asked for it), but an environment switch that disables it wins, with a warning.
* aliases: the pip extras' names ``comet`` and ``azureml`` (:data:`ALIASES`) stand for ``comet_ml`` and
  ``azure_ml`` wherever a tracker is named (``report_to``, ``TRACKLINK_REPORT_TO``, ``TRACKLINK_DISABLE``);
  the resolution, banners and ``tracklink doctor`` show the canonical name. A plugin registered under an
  alias's own name wins over the alias.
* ``"none"`` cannot be combined with names; duplicates are removed (after aliases), first occurrence kept.
* disabling switches: ``TRACKLINK_DISABLE=name,name`` plus each tracker's own (``WANDB_DISABLED``,
  ``DISABLE_MLFLOW_INTEGRATION``, ``COMET_MODE=DISABLED``, ...).
* invalid values of the selected trackers' declared environment variables are errors.

Resolution reads entry points and package metadata; it imports no SDK and not torch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ReportToError, TrackerUnavailableError, UnknownTrackerError
from .registry import TrackerSpec, discover

logger = logging.getLogger("tracklink")

__all__ = ["ALIASES", "NOT_GIVEN", "Resolution", "canonical_name", "resolve_report_to"]

ENV_REPORT_TO = "TRACKLINK_REPORT_TO"
ENV_DISABLE = "TRACKLINK_DISABLE"
DEFAULT = "all"
#: Accepted alternative names: the pip extras ``[comet]`` and ``[azureml]`` install the trackers
#: ``comet_ml`` and ``azure_ml`` (transformers' ``report_to`` names), so either name selects them.
ALIASES: dict[str, str] = {"comet": "comet_ml", "azureml": "azure_ml"}
#: Names only suggested in the "unknown tracker" error ("Did you mean ...?"), never accepted silently.
_SUGGESTIONS = {"tb": "tensorboard", "dvc": "dvclive", "w&b": "wandb", "weights_and_biases": "wandb",
                "neptune_ai": "neptune", "flytekit": "flyte"}


class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __reduce__(self) -> str:
        return "NOT_GIVEN"  # pickled by reference: the sentinel stays one object, compared by identity


#: Sentinel for "the argument was not given" (then ``TRACKLINK_REPORT_TO`` or ``"all"`` applies).
NOT_GIVEN: Any = _NotGiven()


@dataclass
class Resolution:
    """The outcome of resolving ``report_to``."""

    requested: list[str]
    names: list[str]
    specs: dict[str, TrackerSpec]
    skipped: dict[str, str] = field(default_factory=dict)

    def selected_specs(self) -> list[TrackerSpec]:
        return [self.specs[name] for name in self.names]

    def banner(self) -> str:
        """The one-line start-of-training summary, e.g. ``trackers: tensorboard, mlflow``."""
        return "trackers: " + (", ".join(self.names) if self.names else "none")


def _tokens(value: Any, origin: str) -> list[str]:
    accepted = "'all', 'none', a tracker name, a comma-separated string of names, or a list of names"
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return ["none"]  # an empty list is what a resolved "none" looks like
    if isinstance(value, str):
        items: Iterable[Any] = [value]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ReportToError(f"{origin}={value!r} has type {type(value).__name__}; accepted: {accepted}")
    tokens: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ReportToError(f"{origin} contains {item!r} ({type(item).__name__}); accepted: {accepted}")
        tokens.extend(part.strip().lower() for part in item.split(",") if part.strip())
    if not tokens:
        raise ReportToError(f"{origin}={value!r} names nothing; accepted: {accepted}")
    return list(dict.fromkeys(tokens))


def canonical_name(name: str, specs: Mapping[str, Any]) -> str:
    """``name`` with an alias (:data:`ALIASES`) replaced by its tracker's name; a registered tracker
    of that very name, or an alias whose tracker is not registered, is left as it is."""
    target = ALIASES.get(name)
    return target if target is not None and name not in specs and target in specs else name


def _canonical(tokens: list[str], specs: Mapping[str, Any]) -> list[str]:
    return list(dict.fromkeys(canonical_name(t, specs) for t in tokens))


def _env_disabled(env: Mapping[str, str], specs: Mapping[str, Any]) -> set[str]:
    return {canonical_name(p.strip().lower(), specs) for p in env.get(ENV_DISABLE, "").split(",") if p.strip()}


def _unknown(name: str, specs: Mapping[str, TrackerSpec]) -> UnknownTrackerError:
    import difflib  # lazy: only for an unknown name (stdlib, slow to import)

    known = sorted(specs)
    guess = ALIASES.get(name) or _SUGGESTIONS.get(name)
    suggestion = guess if guess in specs else None
    if suggestion is None:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        suggestion = close[0] if close else None
    return UnknownTrackerError(name, known, suggestion)


def resolve_report_to(
    value: Any = NOT_GIVEN,
    env: Mapping[str, str] | None = None,
    specs: Mapping[str, TrackerSpec] | None = None,
) -> Resolution:
    """Resolve a ``report_to`` value into the trackers to activate (see the module documentation)."""
    env = os.environ if env is None else env
    specs = dict(discover() if specs is None else specs)
    origin = "report_to"
    if value is NOT_GIVEN:
        raw = env.get(ENV_REPORT_TO, "").strip()
        value, origin = (raw, ENV_REPORT_TO) if raw else (DEFAULT, "report_to")
    tokens = _canonical(_tokens(value, origin), specs)
    if "none" in tokens:
        if len(tokens) > 1:
            raise ReportToError(
                f"{origin}={value!r} combines 'none' with tracker names; use either 'none' or names"
            )
        return Resolution(tokens, [], specs, {n: "report_to is 'none'" for n in specs})

    explicit = [t for t in tokens if t != "all"]
    for name in explicit:
        if name not in specs:
            error = _unknown(name, specs)
            if origin != "report_to":
                error.args = (str(error).replace("report_to names", f"{origin}={value!r} names", 1),)
            raise error
    disabled_env = _env_disabled(env, specs)
    for name in disabled_env:
        if name not in specs:
            raise ReportToError(f"{ENV_DISABLE} names unknown tracker {name!r}; known: {', '.join(sorted(specs))}")

    selected: list[str] = []
    skipped: dict[str, str] = {}

    def disabled_reason(spec: TrackerSpec) -> str | None:
        if spec.name in disabled_env:
            return f"disabled by {ENV_DISABLE}"
        return spec.disabled_by(env)

    for name in explicit:  # errors about named trackers come before anything else
        if not disabled_reason(specs[name]):
            problem = specs[name].availability()
            if problem:
                raise TrackerUnavailableError(name, problem, specs[name].install_hint())

    for token in tokens:
        if token != "all":
            reason = disabled_reason(specs[token])
            if reason:
                logger.warning("tracklink: report_to names %r, but it is %s; skipping it", token, reason)
                skipped[token] = reason
            elif token not in selected:
                selected.append(token)
            continue
        for name, spec in specs.items():
            if name in selected or name in skipped or name in explicit:
                continue
            reason = (
                disabled_reason(spec)
                or spec.availability()
                or (None if spec.auto else "never chosen by 'all'; name it in report_to")
                or spec.ready(env)
            )
            if reason:
                skipped[name] = reason
            else:
                selected.append(name)
    if "dagshub" in selected and "mlflow" in selected and "mlflow" not in explicit:
        selected.remove("mlflow")
        skipped["mlflow"] = "dagshub already logs to the same MLflow tracking server"
    for name in specs:
        if name not in selected and name not in skipped:
            skipped[name] = "not named in report_to"

    problems = [p for name in selected for p in specs[name].env_problems(env)]
    if problems:
        raise ReportToError("invalid tracker settings: " + "; ".join(problems))
    return Resolution(tokens, selected, specs, skipped)
