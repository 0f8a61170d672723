"""Tracker plugins, one module per tracker, all on ``tracklink.Tracker``.

Each class is importable from here (``from tracklink.integrations import WandbCallback``) without
importing its SDK or any other tracker's module: attributes load their module on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Tracker class name -> module inside this package.
_TRACKERS: dict[str, str] = {
    "AzureMLCallback": "azureml",
    "ClearMLCallback": "clearml",
    "CodeCarbonCallback": "codecarbon",
    "CometCallback": "comet",
    "DagsHubCallback": "dagshub",
    "DVCLiveCallback": "dvclive",
    "FlyteCallback": "flyte",
    "KubeflowCallback": "kubeflow",
    "MLflowCallback": "mlflow",
    "NeptuneCallback": "neptune",
    "SwanLabCallback": "swanlab",
    "TensorBoardCallback": "tensorboard",
    "TrackioCallback": "trackio",
    "WandbCallback": "wandb",
}
#: Drivers that connect another training loop to tracklink's trackers; each imports its framework.
DRIVERS: dict[str, str] = {
    "TracklinkBridge": "transformers",
    "TracklinkTracker": "accelerate",
    "TracklinkLogger": "lightning",
}
_CLASSES = {**_TRACKERS, **DRIVERS}

__all__ = sorted(_CLASSES)


def __getattr__(name: str) -> Any:
    module = _CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module 'tracklink.integrations' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CLASSES))
