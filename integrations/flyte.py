"""Flyte tracker (``report_to="flyte"``): checkpoints synced with the Flyte task, log history as a Deck.

Only usable inside a Flyte ``@task``: build the ``Trainer`` (or ``FlyteCallback()``) in the task body,
where ``flytekit.current_context()`` is the task's (also when a locally executed ``@workflow`` runs the
task, as ``pyflyte run`` does); outside a task (a workflow body included) the constructor raises. It is
never chosen by ``report_to="all"`` (name it, or pass an instance in ``callbacks=``).

* ``sync_checkpoints``: every checkpoint directory the trainer writes is saved as the task's checkpoint
  (``current_context().checkpoint.save(<output_dir>/checkpoint-N)``): its files land flat in the task's
  checkpoint location, so on a retry ``current_context().checkpoint.restore()`` returns a directory that
  ``trainer.train(resume_from_checkpoint=...)`` accepts::

      @task(retries=3)
      def train() -> None:
          trainer = Trainer(model, args, ..., callbacks=[FlyteCallback()])
          trainer.train(resume_from_checkpoint=current_context().checkpoint.restore())

* ``save_log_history``: at the end of training (also a failed one) ``state.log_history`` is rendered as
  an HTML table in the Deck ``"Log History"`` (flytekitplugins-deck's ``TableRenderer`` when installed,
  else pandas, else a plain table); Flyte shows decks of tasks with ``enable_deck=True``.

* media values: a Deck ``"Media"`` gets a section per value as it is logged (``<key> (step N)``):
  ``tracklink.Image`` as an inline PNG (with its caption), ``Table`` as an HTML table, ``Text`` as
  preformatted text; a histogram or a figure as an image. Files have no place in a deck and are left out.

All of this happens on the main process only. The task's Flyte context is captured at construction and
re-entered on tracklink's worker thread (Flyte keeps its context per thread). Flyte has no run to
re-attach to, so a resumed training has no run identity; the task's own retry is the resume mechanism.

Variables: flytekit's ``FLYTE_SDK_LOGGING_LEVEL``.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from tracklink.envvars import EnvVar
from tracklink.media import Image, Media, Table
from tracklink.tracker import RunEnd, RunInfo, Tracker

__all__ = ["FlyteCallback", "log_history_html"]

DECK_NAME = "Log History"
MEDIA_DECK = "Media"
_NOT_IN_TASK = (
    "FlyteCallback must be created inside a Flyte task: build the Trainer (or FlyteCallback()) in the body "
    "of a function decorated with flytekit's @task, where flytekit.current_context() is the task's context"
)


def log_history_html(history: list[Mapping[str, Any]]) -> str:
    """The log history as an HTML table (deck TableRenderer, else pandas, else plain HTML)."""
    try:
        import pandas as pd
    except ImportError:
        return _plain_table(history)
    frame = pd.DataFrame(list(history))
    try:
        from flytekitplugins.deck.renderer import TableRenderer
    except ImportError:
        return str(frame.to_html(index=False, na_rep=""))
    return str(TableRenderer().to_html(frame))


def _plain_table(history: list[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in history:
        columns.extend(k for k in row if k not in columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
        for row in history
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class FlyteCallback(Tracker):
    """Syncs checkpoints with the Flyte task's checkpoint and renders the log history as a Deck.

    Args:
        save_log_history: render ``state.log_history`` as the Deck ``"Log History"`` at the end.
        sync_checkpoints: save every checkpoint the trainer writes as the task's checkpoint.
    """

    name = "flyte"
    sdk = "flytekit"
    sdk_min_version = "1.10"
    sdk_module = "flytekit"
    extra = "flyte"
    auto = False
    media = frozenset({"image", "table"})
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("FLYTE_SDK_LOGGING_LEVEL", None, "flytekit's log level (a number, e.g. 40 for errors only).",
               read_by="sdk", kind="int", minimum=0),
    )

    def __init__(self, save_log_history: bool = True, sync_checkpoints: bool = True) -> None:
        for arg, value in (("save_log_history", save_log_history), ("sync_checkpoints", sync_checkpoints)):
            if not isinstance(value, bool):
                raise TypeError(f"FlyteCallback({arg}={value!r}): expected True or False")
        self.save_log_history = save_log_history
        self.sync_checkpoints = sync_checkpoints
        if "flytekit" not in sys.modules and importlib.util.find_spec("flytekit") is not None:
            raise RuntimeError(_NOT_IN_TASK)  # a task body runs with flytekit imported: no need to import it
        self.import_sdk()
        from flytekit.core.context_manager import ExecutionState, FlyteContextManager

        context = FlyteContextManager.current_context()
        # A task body is recognised by its checkpoint, not by the execution mode: flytekit gives every
        # task it runs one (a local sandbox, or the cluster's storage), while a task run by a locally
        # executed workflow (`wf()`, `pyflyte run`) keeps the workflow's LOCAL_WORKFLOW_EXECUTION mode,
        # and a workflow body runs in that same mode without a checkpoint.
        checkpoint: Any = None
        reason = ""
        params = context.user_space_params
        try:
            checkpoint = params.checkpoint if params is not None else None
        except NotImplementedError as exc:
            reason = f" (flytekit: {exc})"
        if checkpoint is None:
            mode = getattr(context.execution_state, "mode", None)
            task_modes = (ExecutionState.Mode.TASK_EXECUTION, ExecutionState.Mode.LOCAL_TASK_EXECUTION,
                          ExecutionState.Mode.DYNAMIC_TASK_EXECUTION,
                          ExecutionState.Mode.LOCAL_DYNAMIC_TASK_EXECUTION)  # a @dynamic body is a task body too
            if mode not in task_modes:
                raise RuntimeError(_NOT_IN_TASK)
            if sync_checkpoints:  # a task on a platform without checkpoints: only the deck can work
                raise RuntimeError(
                    f"FlyteCallback(sync_checkpoints=True) needs the task's checkpoint, which this Flyte task "
                    f"does not have{reason}; pass sync_checkpoints=False to keep only the Log History deck"
                )
        self._context = context
        self.checkpoint: Any = checkpoint if sync_checkpoints else None
        self._media_deck: Any = None

    @classmethod
    def ready(cls, env: Mapping[str, str]) -> str | None:
        if env.get("FLYTE_INTERNAL_EXECUTION_ID"):
            return None
        return "only works inside a Flyte @task (create the Trainer in the task)"

    @property
    def uploads_checkpoints(self) -> bool:
        return bool(getattr(self, "sync_checkpoints", False))

    @contextmanager
    def _in_task(self) -> Iterator[None]:
        """Run in the captured task context (flytekit keeps one per thread)."""
        from flytekit.core.context_manager import FlyteContextManager

        FlyteContextManager.current_context()  # give this thread its own context stack first
        with FlyteContextManager.with_context(self._context.new_builder()):
            yield

    def setup(self, run: RunInfo) -> None:
        pass  # the Deck is rendered at the end, from the run's log history

    def log_media(self, values: dict[str, Media], step: int) -> None:
        parts = []
        for name, value in values.items():
            if isinstance(value, Image):
                data = base64.b64encode(value.png()).decode()
                caption = f"<figcaption>{html.escape(value.caption)}</figcaption>" if value.caption else ""
                body = f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}"/>{caption}</figure>'
            elif isinstance(value, Table):
                body = _plain_table([dict(zip(value.columns, row)) for row in value.text_rows()])
            else:
                continue
            parts.append(self._section(name, step, body))
        self._add_media("".join(parts))

    def log_text(self, texts: dict[str, str], step: int) -> None:
        self._add_media("".join(self._section(name, step, f"<pre>{html.escape(text)}</pre>")
                                for name, text in texts.items()))

    @staticmethod
    def _section(name: str, step: int, body: str) -> str:
        return f"<section><h3>{html.escape(name)} (step {step})</h3>{body}</section>"

    def _add_media(self, fragment: str) -> None:
        if not fragment:
            return
        from flytekit import Deck

        with self._in_task():
            if self._media_deck is None:
                self._media_deck = Deck(MEDIA_DECK, fragment)
            else:
                self._media_deck.append(fragment)

    def log_checkpoint(self, path: str, state: Any) -> None:
        with self._in_task():
            self.checkpoint.save(path)

    def finish(self, end: RunEnd) -> None:
        if not self.save_log_history:
            return
        history = end.log_history
        from flytekit import Deck

        with self._in_task():
            Deck(DECK_NAME, log_history_html(history))
