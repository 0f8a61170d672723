"""Bad search inputs give clear errors before any trial trains.

Catalogue: unknown backend ("hyperopt"), a backend that is not installed, direction "up", n_trials 0,
hp_space / compute_objective that are not functions, no model_init, no evaluation data, a space that
returns a list, an invalid value for an argument (learning_rate=-1), searching output_dir or report_to,
an unknown backend option, several objectives with Ray.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from helpers import RegressionDataset, RegressionModel


def _trainer(tmp_path: Path, model_init: Any = True, eval_dataset: bool = True) -> Any:
    from tracklink.trainer import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", max_steps=5,
                             per_device_train_batch_size=8, eval_strategy="steps" if eval_dataset else "no",
                             eval_steps=5, save_strategy="no", disable_tqdm=True)
    init = (lambda trial=None: RegressionModel()) if model_init else None
    return Trainer(model=None if init else RegressionModel(), model_init=init, args=args,
                   train_dataset=RegressionDataset(),
                   eval_dataset=RegressionDataset(length=16, seed=7) if eval_dataset else None)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backend": "hyperopt"}, "backend='hyperopt') is invalid; accepted: 'optuna', 'ray'"),
    ({"direction": "up"}, "direction='up') is invalid; accepted: 'minimize', 'maximize'"),
    ({"n_trials": 0}, "n_trials=0) is invalid; accepted: an integer >= 1"),
    ({"hp_space": "lr"}, "hp_space='lr') must be a function"),
    ({"compute_objective": 3}, "compute_objective=3) must be a function"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        _trainer(tmp_path).hyperparameter_search(**kwargs)
    assert message in str(info.value)


def test_backend_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(RuntimeError, match=r'needs ray.tune: pip install "tracklink\[ray\]"'):
        _trainer(tmp_path).hyperparameter_search(backend="ray")


def test_needs_model_init_and_evaluation_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs Trainer\(model_init=\.\.\.\)"):
        _trainer(tmp_path, model_init=False).hyperparameter_search(backend="optuna")
    with pytest.raises(ValueError, match="needs an eval_dataset"):
        _trainer(tmp_path, eval_dataset=False).hyperparameter_search(backend="optuna")


@pytest.mark.sdk("optuna")
@pytest.mark.parametrize(("space", "message"), [
    (lambda t: ["learning_rate"], "must give a dict of values, got list"),
    (lambda t: {"learning_rate": -1.0}, "TrainingArguments.learning_rate=-1.0 is invalid"),
    (lambda t: {"output_dir": "elsewhere"}, "hyper-parameter 'output_dir' cannot be searched"),
    (lambda t: {"report_to": "wandb"}, "hyper-parameter 'report_to' cannot be searched"),
])
def test_bad_search_space(tmp_path: Path, space: Any, message: str) -> None:
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError) as info:
        trainer.hyperparameter_search(hp_space=space, n_trials=1, backend="optuna")
    assert message in str(info.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("run-*/checkpoint-*"))


@pytest.mark.sdk("optuna")
def test_unknown_backend_option(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown options \\['n_workers'\\]"):
        _trainer(tmp_path).hyperparameter_search(backend="optuna", n_workers=4)


@pytest.mark.sdk("ray")
def test_ray_refuses_several_objectives(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="single objective"):
        _trainer(tmp_path).hyperparameter_search(backend="ray", direction=["minimize", "maximize"])
