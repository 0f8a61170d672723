"""Discovery of tracker plugins through the ``tracklink.trackers`` entry-point group.

Built-in trackers and third-party ones are found the same way: an entry point whose name is the
``report_to`` name and whose value is a ``Tracker`` subclass, any ``TrainerCallback`` subclass, or a
module/object with ``@tracklink.hookimpl`` functions. Discovery reads entry points and package metadata
only; loading an entry point imports the plugin module (built-in modules never import their SDK at
import time), and a plugin that fails to load is reported with the reason instead of breaking the rest.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BUILTIN_ORDER", "GROUP", "TrackerSpec", "discover", "version_tuple"]

GROUP = "tracklink.trackers"
DISTRIBUTION = "tracklink"

#: The order ``report_to="all"`` uses for built-in trackers (transformers' order, which appends swanlab,
#: trackio and kubeflow after clearml; kubeflow is ready only inside a Kubeflow TrainJob, flyte is never
#: picked automatically). Third-party trackers follow, sorted by name.
BUILTIN_ORDER: tuple[str, ...] = (
    "azure_ml", "comet_ml", "dagshub", "dvclive", "mlflow", "neptune", "tensorboard", "wandb",
    "codecarbon", "clearml", "swanlab", "trackio", "kubeflow", "flyte",
)


def version_tuple(text: str) -> tuple[int, ...]:
    """The numeric release part of a version string (``"2.10.1rc1"`` -> ``(2, 10, 1)``)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@dataclass
class TrackerSpec:
    """One discovered tracker: where it comes from, and its declarations."""

    name: str
    value: str
    distribution: str | None
    distribution_version: str | None
    entry_point: metadata.EntryPoint | None = None
    obj: Any = None
    load_error: str | None = None
    _loaded: bool = field(default=False, repr=False)

    @property
    def source(self) -> str:
        return "builtin" if self.distribution == DISTRIBUTION else "third-party"

    def load(self) -> Any:
        """Import the plugin object (once); a failure is kept in ``load_error``."""
        if not self._loaded:
            self._loaded = True
            try:
                assert self.entry_point is not None
                self.obj = self.entry_point.load()
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
        return self.obj

    def _attr(self, name: str, default: Any) -> Any:
        obj = self.load()
        return getattr(obj, name, default) if isinstance(obj, type) else default

    # declarations, with the defaults a plain plugin gets (ready, main rank, no SDK)
    @property
    def sdk_distributions(self) -> tuple[str, ...]:
        """The distributions that provide the SDK, as declared: one name, or alternatives (a full and a
        slim build of one SDK, such as ``("mlflow", "mlflow-skinny")``), preferred first."""
        declared = self._attr("sdk", None)
        if not declared:
            return ()
        return (declared,) if isinstance(declared, str) else tuple(declared)

    def _installed_sdk(self) -> tuple[str, str] | None:
        """The first declared SDK distribution that is installed, with its version (metadata only)."""
        for distribution in self.sdk_distributions:
            version = _installed_version(distribution)
            if version is not None:
                return distribution, version
        return None

    @property
    def sdk(self) -> str | None:
        """The SDK distribution: the installed one of the declared alternatives, else the preferred one."""
        installed = self._installed_sdk()
        if installed is not None:
            return installed[0]
        return self.sdk_distributions[0] if self.sdk_distributions else None

    @property
    def sdk_min_version(self) -> str | None:
        """The minimum version of :attr:`sdk` (declared once, or per alternative distribution)."""
        return self._min_version(self.sdk)

    def _min_version(self, distribution: str | None) -> str | None:
        declared = self._attr("sdk_min_version", None)
        if isinstance(declared, Mapping):
            return declared.get(distribution) if distribution else None
        return declared

    @property
    def extra(self) -> str | None:
        return self._attr("extra", None)

    @property
    def env_vars(self) -> tuple[Any, ...]:
        return tuple(self._attr("env_vars", ()))

    @property
    def rank_policy(self) -> str:
        return self._attr("rank_policy", "main")

    @property
    def auto(self) -> bool:
        return bool(self._attr("auto", True))

    @property
    def inline(self) -> bool:
        return bool(self._attr("inline", False))

    def install_hint(self) -> str:
        hint = self._attr("install_hint", None)
        if callable(hint):
            return str(hint())
        if self.distribution and self.source == "third-party":
            return f"pip install {self.distribution}"
        # extras are written with "-" (pip before 23.3 does not normalize a requested [comet_ml])
        return f'pip install "tracklink[{self.name.replace("_", "-")}]"'

    @property
    def sdk_version(self) -> str | None:
        installed = self._installed_sdk()
        return installed[1] if installed is not None else None

    def availability(self) -> str | None:
        """``None`` when the plugin can be used; otherwise what is missing."""
        self.load()
        if self.load_error:
            return f"its plugin failed to load ({self.load_error})"
        if not self.sdk_distributions:
            return None
        installed = self._installed_sdk()
        if installed is None:
            return f"its SDK ({' or '.join(self.sdk_distributions)}) is not installed"
        distribution, version = installed
        minimum = self._min_version(distribution)
        if minimum and version_tuple(version) < version_tuple(minimum):
            return f"its SDK {distribution} {version} is older than the required {minimum}"
        return None

    def _classmethod(self, name: str, env: Mapping[str, str], default: Any) -> Any:
        obj = self.load()
        method = getattr(obj, name, None) if isinstance(obj, type) else None
        return method(env) if callable(method) else default

    def ready(self, env: Mapping[str, str]) -> str | None:
        return self._classmethod("ready", env, None)

    def disabled_by(self, env: Mapping[str, str]) -> str | None:
        return self._classmethod("disabled_by", env, None)

    def env_problems(self, env: Mapping[str, str]) -> list[str]:
        return list(self._classmethod("env_problems", env, []))

    def create(self) -> Any:
        """A plugin instance: classes are instantiated without arguments, other objects used as is."""
        obj = self.load()
        if self.load_error:
            raise RuntimeError(f"tracker plugin {self.name!r} failed to load: {self.load_error}")
        return obj() if isinstance(obj, type) else obj

    @property
    def is_module(self) -> bool:
        return isinstance(self.load(), types.ModuleType)


def discover() -> dict[str, TrackerSpec]:
    """Every tracker plugin installed, built-in ones in :data:`BUILTIN_ORDER`, then third-party
    ones by name. When two distributions claim one name, the built-in one wins."""
    found: dict[str, TrackerSpec] = {}
    for ep in metadata.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        spec = TrackerSpec(
            name=ep.name,
            value=ep.value,
            distribution=dist.metadata["Name"] if dist is not None else None,
            distribution_version=dist.version if dist is not None else None,
            entry_point=ep,
        )
        current = found.get(ep.name)
        if current is None or (spec.source == "builtin" and current.source != "builtin"):
            found[ep.name] = spec

    def order(name: str) -> tuple[int, int, str]:
        if name in BUILTIN_ORDER and found[name].source == "builtin":
            return (0, BUILTIN_ORDER.index(name), name)
        return (1, 0, name)

    return {name: found[name] for name in sorted(found, key=order)}
