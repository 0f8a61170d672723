"""Hyper-parameter search: Optuna on one machine, Ray Tune across many.

``Trainer.hyperparameter_search`` runs one training per trial with transformers' semantics: a fresh model
from ``model_init``, the trial's hyper-parameters applied to a copy of the arguments, checkpoints in
``<output_dir>/run-<trial>`` (or ``hp_name(trial)``), and the objective taken from the last evaluation
(default: the evaluation loss, else the sum of the metrics). Every evaluation reports the objective to
the backend, which may prune the trial.

Trackers see each trial as its own run, named after the trial, with the trial's hyper-parameters in its
parameters and the search identified by ``RunInfo.search`` (the study name, the backend and the
direction) so backends that group runs can do so. A pruned trial logs ``trial_pruned = 1`` and closes its
runs as killed; a failed trial closes them as failed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tracklink.signals import SigtermGuard
from tracklink.state import SEARCH_STATE_KEY
from tracklink.tracker import declared_environment

logger = logging.getLogger("tracklink")

__all__ = [
    "BACKENDS",
    "BestRun",
    "SearchContext",
    "TrialInfo",
    "default_compute_objective",
    "default_hp_space_optuna",
    "default_hp_space_ray",
]

BACKENDS: dict[str, tuple[str, str]] = {"optuna": ("optuna", "optuna"), "ray": ("ray.tune", "ray")}
DIRECTIONS = ("minimize", "maximize")


@dataclass
class BestRun:
    """The best trial of a search: its id, objective value(s) and hyper-parameters."""

    run_id: str
    objective: float | list[float]
    hyperparameters: dict[str, Any]
    run_summary: Any = None


@dataclass
class TrialInfo:
    """What the trainer needs to know about the running trial, whatever the backend."""

    backend: str
    number: int
    name: str
    params: dict[str, Any]
    handle: Any = None  # optuna.Trial, or None for Ray (reports go through ray.tune.report)
    reported_final: bool = False  # Ray: the session already ended (no further report)


@dataclass
class SearchContext:
    """Identity of the running search; stored in ``state.stateful_callbacks`` under ``SEARCH_STATE_KEY`` so
    trackers (``RunInfo.search``) and checkpoints know which search and trial a run belongs to."""

    name: str
    backend: str
    direction: Any
    trial: int
    trial_name: str
    state_key: str = SEARCH_STATE_KEY

    def state(self) -> dict[str, Any]:
        return {
            "args": {},
            "attributes": {
                "name": self.name, "backend": self.backend, "direction": self.direction,
                "trial": self.trial, "trial_name": self.trial_name,
            },
        }


def default_compute_objective(metrics: Mapping[str, float]) -> float:
    """The evaluation loss when there is one, else the sum of the other numeric metrics (timing and
    ``epoch`` left out), as transformers does."""
    metrics = dict(metrics)
    loss = metrics.pop("eval_loss", None)
    if loss is not None:
        return float(loss)
    metrics.pop("epoch", None)
    kept = [
        float(v) for k, v in metrics.items()
        if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second", "_flos"))
    ]
    if not kept:
        raise ValueError(
            "hyperparameter_search: the evaluation produced no metric to optimise (no eval_loss and no "
            f"numeric metric in {sorted(metrics)}); pass compute_objective"
        )
    return sum(kept)


def default_hp_space_optuna(trial: Any) -> dict[str, Any]:
    """transformers' default Optuna space."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-6, 1e-4, log=True),
        "num_train_epochs": trial.suggest_int("num_train_epochs", 1, 5),
        "seed": trial.suggest_int("seed", 1, 40),
        "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [4, 8, 16, 32, 64]),
    }


def default_hp_space_ray(trial: Any) -> dict[str, Any]:
    """transformers' default Ray Tune space."""
    from ray import tune

    return {
        "learning_rate": tune.loguniform(1e-6, 1e-4),
        "num_train_epochs": tune.choice(list(range(1, 6))),
        "seed": tune.uniform(1, 40),
        "per_device_train_batch_size": tune.choice([4, 8, 16, 32, 64]),
    }


def choose_backend(backend: str | None) -> str:
    """The backend to use: the one named (validated and installed), else the first installed."""
    if backend is None:
        for name, (module, _) in BACKENDS.items():
            if importlib.util.find_spec(module.split(".")[0]) is not None:
                return name
        raise RuntimeError(
            'hyperparameter_search needs optuna or ray[tune]: pip install "tracklink[optuna]" or "tracklink[ray]"'
        )
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(
            f"hyperparameter_search(backend={backend!r}) is invalid; accepted: {', '.join(map(repr, BACKENDS))}"
        )
    name = backend.lower()
    module, extra = BACKENDS[name]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise RuntimeError(f'hyperparameter_search(backend={name!r}) needs {module}: pip install "tracklink[{extra}]"')
    return name


def check_direction(direction: Any) -> str | list[str]:
    if isinstance(direction, str) and direction.lower() in DIRECTIONS:
        return direction.lower()
    if isinstance(direction, (list, tuple)) and direction and all(
        isinstance(d, str) and d.lower() in DIRECTIONS for d in direction
    ):
        return [d.lower() for d in direction]
    raise ValueError(
        f"hyperparameter_search(direction={direction!r}) is invalid; accepted: 'minimize', 'maximize', "
        "or a list of them (one per objective)"
    )


def trial_arguments(base: Any, params: Mapping[str, Any]) -> Any:
    """A copy of ``base`` (TrainingArguments) with the trial's values applied; values that are not
    argument fields are left for ``model_init(trial)``. Values are cast to the field's current type;
    the copy is validated like any arguments, so a bad value fails naming the field."""
    if not isinstance(params, Mapping):
        raise ValueError(
            f"the hyper-parameter space must give a dict of values, got {type(params).__name__}: {params!r}"
        )
    fields = {f.name for f in dataclasses.fields(base) if f.init}
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(key, str):
            raise ValueError(f"hyper-parameter names must be strings; got {key!r}")
        if key in ("output_dir", "report_to"):
            raise ValueError(f"hyper-parameter {key!r} cannot be searched; accepted: TrainingArguments fields "
                             "other than output_dir and report_to, or model_init parameters")
        if key not in fields:
            extra[key] = value
            continue
        current = getattr(base, key)
        if isinstance(current, bool):
            value = bool(value)
        elif isinstance(current, int) and not isinstance(value, bool) and float(value).is_integer():
            value = int(value)
        elif isinstance(current, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        known[key] = value
    if extra:
        logger.info("tracklink: hyper-parameters %s are not TrainingArguments fields; model_init receives them "
                    "through the trial", sorted(extra))
    return dataclasses.replace(base, **{**known, "report_to": list(base.report_to)})


def study_name(prefix: str | None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{prefix or 'search'}-{stamp}"


def validate(n_trials: Any, hp_space: Callable[..., Any] | None, compute_objective: Any) -> None:
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"hyperparameter_search(n_trials={n_trials!r}) is invalid; accepted: an integer >= 1")
    for name, value in (("hp_space", hp_space), ("compute_objective", compute_objective)):
        if value is not None and not callable(value):
            raise ValueError(f"hyperparameter_search({name}={value!r}) must be a function or None")


# -- Optuna -------------------------------------------------------------------------------------------


def run_optuna(trainer: Any, hp_space: Any, compute_objective: Any, n_trials: int, direction: Any,
               hp_name: Any, **kwargs: Any) -> BestRun | list[BestRun]:
    """Run the search with Optuna. ``storage`` (e.g. ``"sqlite:///study.db"``) with ``study_name`` makes
    the study persistent: running the same search again continues it until ``n_trials`` trials have
    finished. Other keywords: ``sampler``, ``pruner``, ``timeout``, ``n_jobs``, ``catch``,
    ``gc_after_trial``."""
    import optuna

    storage = kwargs.pop("storage", None)
    name = kwargs.pop("study_name", None) or study_name(getattr(trainer.args, "run_name", None))
    multi = isinstance(direction, list)
    study = optuna.create_study(
        study_name=name, storage=storage, load_if_exists=storage is not None,
        direction=None if multi else direction, directions=direction if multi else None,
        sampler=kwargs.pop("sampler", None), pruner=kwargs.pop("pruner", None),
    )
    options = {key: kwargs.pop(key) for key in ("timeout", "n_jobs", "catch", "gc_after_trial") if key in kwargs}
    if kwargs:
        raise TypeError(f"hyperparameter_search(backend='optuna') got unknown options {sorted(kwargs)}; accepted: "
                        "storage, study_name, sampler, pruner, timeout, n_jobs, catch, gc_after_trial")
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = n_trials - len(study.get_trials(deepcopy=False, states=finished))
    space = hp_space or default_hp_space_optuna

    def objective(trial: Any) -> Any:
        params = space(trial)
        info = TrialInfo("optuna", trial.number, hp_name(trial) if hp_name else f"run-{trial.number}",
                         dict(params) if isinstance(params, Mapping) else params, trial)
        context = SearchContext(name, "optuna", direction, trial.number, info.name)
        try:
            return run_trial(trainer, info, params, compute_objective, context)
        except (Exception, KeyboardInterrupt):
            raise  # Optuna records the trial as failed (or pruned)
        except BaseException:
            # SIGTERM (SystemExit): Optuna would leave the trial RUNNING in a persistent study
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise

    if remaining > 0:
        study.optimize(objective, n_trials=remaining, **options)
    if multi:
        return [BestRun(str(t.number), list(t.values), dict(t.params)) for t in study.best_trials]
    try:
        best = study.best_trial
    except ValueError:
        raise RuntimeError(f"hyperparameter_search: no trial of study {name!r} completed") from None
    return BestRun(str(best.number), float(best.value), dict(best.params))


# -- Ray Tune -----------------------------------------------------------------------------------------


@dataclass
class TrainerRecipe:
    """What a Ray worker needs to build its own trainer (the trainer itself holds threads and locks)."""

    trainer_class: type
    args: Any
    model_init: Any
    data_collator: Any
    train_dataset: Any
    eval_dataset: Any
    processing_class: Any
    compute_metrics: Any
    callbacks: list[Any]

    @classmethod
    def of(cls, trainer: Any) -> TrainerRecipe:
        import copy

        # Ray runs each trial in its own working directory: make the paths absolute first
        args = copy.copy(trainer.args)
        for field in ("output_dir", "logging_dir"):
            value = getattr(args, field)
            if value:
                object.__setattr__(args, field, os.path.abspath(value))
        return cls(type(trainer), args, trainer.model_init, trainer.data_collator, trainer.train_dataset,
                   trainer.eval_dataset, trainer.processing_class, trainer.compute_metrics,
                   list(getattr(trainer, "_user_callbacks", [])))

    def build(self) -> Any:
        return self.trainer_class(
            args=self.args, model_init=self.model_init, data_collator=self.data_collator,
            train_dataset=self.train_dataset, eval_dataset=self.eval_dataset,
            processing_class=self.processing_class, compute_metrics=self.compute_metrics,
            callbacks=list(self.callbacks),
        )


#: Prefixes of environment variables passed on to Ray trial workers besides the trackers' declared ones:
#: tracklink's own settings, and the variables the built-in trackers' SDKs read without the tracker
#: declaring each of them (``MLFLOW_S3_ENDPOINT_URL``, ``WANDB_NOTES``, ...).
FORWARDED_ENV_PREFIXES = (
    "TRACKLINK_", "MLFLOW_", "WANDB_", "COMET_", "NEPTUNE_", "CLEARML_", "DVC", "CODECARBON_", "AZUREML_",
    "DAGSHUB_", "TENSORBOARD_", "HF_MLFLOW_", "HF_DAGSHUB_", "HF_DVCLIVE_", "DISABLE_MLFLOW_", "FLYTE_",
)


def tracker_environment() -> dict[str, str]:
    """The driver's environment variables that Ray trial workers set before building their trainer, read
    when the search starts (a worker, possibly on another machine, does not share the driver's
    environment): every variable a tracker declares (``Tracker.env_vars`` of every registered plugin,
    built-in or third-party, and of loaded tracker classes), so each tracker is configured and
    authenticated like on the driver, plus those under :data:`FORWARDED_ENV_PREFIXES`.

    Declared secrets are forwarded too (workers need the credentials); only names are ever logged.
    """
    declared = declared_environment()
    environment = {k: v for k, v in os.environ.items() if k in declared or k.startswith(FORWARDED_ENV_PREFIXES)}
    secret = sorted(k for k in environment if declared.get(k))
    logger.debug(
        "tracklink: passing %d environment variables to the Ray workers: %s (secrets among them: %s)",
        len(environment), ", ".join(sorted(environment)) or "none", ", ".join(secret) or "none",
    )
    return environment


def _ray_trial(config: dict[str, Any], recipe: TrainerRecipe, compute_objective: Any, hp_name: Any,
               search: tuple[str, str], environment: dict[str, str]) -> None:
    from ray import tune

    os.environ.update(environment)
    trainer = recipe.build()
    context = tune.get_context()
    trial_id = context.get_trial_id() or "0"
    number = int(trial_id.rsplit("_", 1)[-1]) if trial_id.rsplit("_", 1)[-1].isdigit() else 0
    name = hp_name(config) if hp_name else f"run-{trial_id}"
    info = TrialInfo("ray", number, name, dict(config), None)
    objective = run_trial(trainer, info, config, compute_objective, SearchContext(search[0], "ray", search[1], number, name))
    if not info.reported_final:
        tune.report({"objective": objective, "trial_name": name, "step": trainer.state.global_step})


def run_ray(trainer: Any, hp_space: Any, compute_objective: Any, n_trials: int, direction: Any,
            hp_name: Any, **kwargs: Any) -> BestRun:
    """Run the search with Ray Tune: on the cluster ``ray.init()`` connects to (``RAY_ADDRESS``, or a
    local instance; ``ray_init_kwargs`` are passed to ``ray.init`` when Ray is not initialised yet).
    Other keywords: ``resources_per_trial`` (default one CPU), ``scheduler``, ``search_alg``,
    ``storage_path`` (default ``<output_dir>/ray_results``), ``name``. Each trial trains in its own
    worker process, where the trial's trackers run as that process's main rank."""
    import ray
    from ray import tune

    if isinstance(direction, list):
        raise ValueError("hyperparameter_search(backend='ray') optimises a single objective; direction must "
                         "be 'minimize' or 'maximize'")
    if trainer.model_init is None:
        raise ValueError("hyperparameter_search needs Trainer(model_init=...)")
    init_kwargs = kwargs.pop("ray_init_kwargs", {})
    if not ray.is_initialized():
        ray.init(**init_kwargs)
    resources = kwargs.pop("resources_per_trial", {"cpu": 1})
    name = kwargs.pop("name", None) or study_name(getattr(trainer.args, "run_name", None))
    storage = kwargs.pop("storage_path", None) or os.path.abspath(os.path.join(trainer.args.output_dir, "ray_results"))
    tune_config = tune.TuneConfig(
        metric="objective", mode="max" if direction == "maximize" else "min", num_samples=n_trials,
        scheduler=kwargs.pop("scheduler", None), search_alg=kwargs.pop("search_alg", None),
    )
    if kwargs:
        raise TypeError(f"hyperparameter_search(backend='ray') got unknown options {sorted(kwargs)}; accepted: "
                        "ray_init_kwargs, resources_per_trial, scheduler, search_alg, storage_path, name")
    space = (hp_space or default_hp_space_ray)(None)
    if not isinstance(space, Mapping):
        raise ValueError(f"the Ray search space must be a dict, got {type(space).__name__}: {space!r}")
    trainable = tune.with_resources(
        tune.with_parameters(_ray_trial, recipe=TrainerRecipe.of(trainer), compute_objective=compute_objective,
                             hp_name=hp_name, search=(name, direction), environment=tracker_environment()),
        resources,
    )
    tuner = tune.Tuner(trainable, param_space=dict(space), tune_config=tune_config,
                       run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0))
    results = tuner.fit()
    best = results.get_best_result()
    if best.metrics is None or "objective" not in best.metrics:
        raise RuntimeError(f"hyperparameter_search: no Ray trial of {name!r} reported an objective")
    return BestRun(str(best.metrics.get("trial_id")), float(best.metrics["objective"]), dict(best.config), best)


# -- one trial, run by the trainer the search was started on ----------------------------------------


def run_trial(trainer: Any, info: Any, params: Any, compute_objective: Any, context: Any) -> Any:
    """Train one trial (used by the search backends); returns its objective."""
    base_args = trainer.args
    trial_args = trial_arguments(base_args, params)
    trainer.args = trial_args
    trainer._trial_info = info
    trainer._search_context = context
    trainer._compute_objective = compute_objective or default_compute_objective
    trainer.objective = None
    try:
        trainer.train(trial=info.handle if info.handle is not None else dict(info.params))
        if trainer.objective is None:
            report(trainer, trainer.evaluate(), final=True)
        return trainer.objective
    finally:
        trainer.args = base_args
        trainer._trial_info = None
        trainer._search_context = None


def report(trainer: Any, metrics: dict[str, float], final: bool = False) -> None:
    """Compute the trial's objective from an evaluation and report it; prune when the backend says so."""
    objective = trainer._compute_objective(metrics)
    trainer.objective = objective
    info = trainer._trial_info
    if info.backend == "optuna" and not isinstance(objective, (list, tuple)) and not final:
        trial = info.handle
        trial.report(float(objective), trainer.state.global_step)
        if trial.should_prune():
            trainer.log({"trial_pruned": 1.0})
            import optuna  # lazy: the search backend is an optional SDK

            raise optuna.TrialPruned(f"trial {info.name} pruned at step {trainer.state.global_step}")
    elif info.backend == "ray" and not final:
        from ray import tune  # lazy: the search backend is an optional SDK

        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        try:
            tune.report({**numeric, "objective": float(objective), "step": trainer.state.global_step})
        except SystemExit:
            # Ray stops a trial by exiting from report(): pruning, unless the trial is at its last
            # step anyway (a scheduler's max_t reached), where training just finishes normally
            info.reported_final = True
            if trainer.state.global_step < trainer.state.max_steps:
                trainer.log({"trial_pruned": 1.0})
                raise


def hyperparameter_search(trainer: Any, hp_space: Any, compute_objective: Any, n_trials: int, direction: Any,
                          backend: str | None, hp_name: Any, **kwargs: Any) -> Any:
    """``Trainer.hyperparameter_search``: check the setting, pick the backend, run the trials."""
    if trainer.model_init is None:
        raise ValueError("hyperparameter_search needs Trainer(model_init=...): every trial trains a fresh model")
    validate(n_trials, hp_space, compute_objective)
    direction = check_direction(direction)
    if trainer.args.eval_strategy == "no" and trainer.eval_dataset is None:
        raise ValueError("hyperparameter_search needs an eval_dataset: the objective comes from evaluations")
    run = run_optuna if choose_backend(backend) == "optuna" else run_ray
    with SigtermGuard():  # between trials too: the backend then records the trial as failed
        return run(trainer, hp_space, compute_objective, n_trials, direction, hp_name, **kwargs)
