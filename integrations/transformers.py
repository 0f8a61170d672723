"""Use tracklink's trackers from transformers' ``Trainer``.

``TracklinkBridge`` is a ``transformers.TrainerCallback`` that forwards every transformers event into a
tracklink hub, so a transformers user gets tracklink's trackers with isolation, non-blocking delivery,
redaction, failure status and resume::

    from transformers import Trainer
    from tracklink.integrations.transformers import TracklinkBridge

    trainer = Trainer(..., args=TrainingArguments(..., report_to="none"),
                      callbacks=[TracklinkBridge(report_to=["tensorboard", "mlflow"])])

Keep transformers' own ``report_to="none"`` so the same tracker is not attached twice.

Failure status: transformers has no exception event. The bridge closes its trackers as ``killed`` when
the process gets SIGTERM during training (it turns SIGTERM into an exception, like tracklink's trainer)
and, when training began but never ended, as ``failed`` (``killed`` after ``KeyboardInterrupt``) at
interpreter exit. Wrap ``trainer.train()`` in ``with bridge.failures():`` to close them as failed at
the moment the exception passes.

Resume: the bridge is a transformers ``ExportableState``; the trackers' run identities are saved in
the checkpoint's ``trainer_state.json`` under ``TracklinkBridge`` and used again when transformers
resumes from that checkpoint.

This module imports transformers; ``import tracklink`` and ``import tracklink.integrations`` do not.
"""

from __future__ import annotations

import contextlib
import os
import sys
import weakref
from collections.abc import Iterator
from typing import Any

from transformers.trainer_callback import ExportableState, TrainerCallback

from tracklink.events import EVENTS
from tracklink.process import ProcessInfo
from tracklink.resolve import NOT_GIVEN, resolve_report_to
from tracklink.run import Run
from tracklink.shutdown import on_exit, uncaught_exception
from tracklink.signals import SigtermGuard
from tracklink.state import saved_attributes

__all__ = ["TracklinkBridge"]

_live: weakref.WeakSet[TracklinkBridge] = weakref.WeakSet()


class TracklinkBridge(TrainerCallback, ExportableState):
    """Forwards transformers' training events to tracklink trackers and plugins.

    Args:
        report_to: tracklink's ``report_to`` (``"all"``, ``"none"``, names; default
            ``TRACKLINK_REPORT_TO`` or ``"all"``), resolved now: unknown names and missing SDKs fail here.
        callbacks: extra tracklink plugins (``Tracker`` instances, ``@tracklink.hookimpl`` objects).
    """

    def __init__(self, report_to: Any = NOT_GIVEN, callbacks: list[Any] | None = None) -> None:
        self.resolution = resolve_report_to(report_to)
        self.process = ProcessInfo.from_env()
        # the run's trackers; the bridge drives them with transformers' events
        self.run = Run(self.resolution, process=self.process, callbacks=callbacks or [])
        self.hub = self.run.hub
        self._training = False
        self._sigterm = SigtermGuard()
        self._last_args: Any = None
        self._last_state: Any = None
        _live.add(self)

    @property
    def trackers(self) -> dict[str, Any]:
        return self.hub.trackers

    # -- transformers' ExportableState -----------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"args": {"report_to": list(self.resolution.names)},
                "attributes": {"tracker_states": self.hub.tracker_states()}}

    def _restore(self, state: Any) -> None:
        self.hub.restore_tracker_states(saved_attributes(state, type(self).__name__).get("tracker_states") or {})

    # -- events ----------------------------------------------------------------------------------

    def _refs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        hub = self.hub
        hub.model = kwargs.pop("model", hub.model)
        processing = kwargs.pop("processing_class", kwargs.pop("tokenizer", None))
        if processing is not None:
            hub.processing_class = processing
        for name in ("optimizer", "lr_scheduler", "train_dataloader", "eval_dataloader"):
            if name in kwargs:
                setattr(hub, name, kwargs.pop(name))
        return kwargs

    def _forward(self, event: str, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last_args, self._last_state = args, state
        extras = self._refs(dict(kwargs))
        self.hub.call_event(event, args, state, control, **extras)

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Trackers validate the arguments (``check_args``; a refusal propagates), then ``on_init_end``."""
        self._last_args, self._last_state = args, state
        self.hub.on_init_end(args, state, control, **self._refs(dict(kwargs)))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step > 0:
            self._restore(state)
        self._training = True
        self._sigterm.install()
        self._forward("on_train_begin", args, state, control, **kwargs)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if getattr(state, "is_hyper_param_search", False) and state.trial_name:
            candidate = os.path.join(args.output_dir, state.trial_name, f"checkpoint-{state.global_step}")
            checkpoint = candidate if os.path.isdir(candidate) else checkpoint
        self._forward("on_save", args, state, control, checkpoint_dir=checkpoint, **kwargs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._refs(dict(kwargs))
        self.hub.on_train_end(args, state, control)
        self._training = False
        self._sigterm.restore()

    def fail(self, exception: BaseException) -> None:
        """Close the trackers' runs as failed (or killed for an interrupt or SIGTERM) now."""
        if not self._training:
            return
        self._training = False
        self._sigterm.restore()
        self.hub.on_exception(self._last_args, self._last_state, None, exception=exception)

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """``with bridge.failures(): trainer.train()`` closes the runs as failed when training raises."""
        try:
            yield
        except BaseException as exc:
            self.fail(exc)
            raise


def _make_forwarder(event: str) -> Any:
    def forward(self: TracklinkBridge, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._forward(event, args, state, control, **kwargs)

    forward.__name__ = event
    forward.__doc__ = f"Forward transformers' ``{event}`` to the tracklink hub."
    return forward


# every tracklink event transformers fires (all but on_exception, which it lacks), from the event list
for _event in EVENTS:
    if _event != "on_exception" and _event not in TracklinkBridge.__dict__:
        setattr(TracklinkBridge, _event, _make_forwarder(_event))


def _close_unfinished() -> None:
    """At interpreter exit: a training that began and never ended did not succeed."""
    last = uncaught_exception() or getattr(sys, "last_value", None) or getattr(sys, "last_exc", None)
    exception = last if isinstance(last, BaseException) else RuntimeError("training did not finish")
    for bridge in list(_live):
        bridge.fail(exception)


on_exit("runs", _close_unfinished)
