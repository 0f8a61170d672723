"""CodeCarbon: train through tracklink's Trainer with the real (offline) CodeCarbon tracker, read back
``emissions.csv`` and the emissions metrics that the other trackers receive in the final summary.

CodeCarbon's first ``start()`` in a process probes the hardware (about 1.6 s), so the tests are few.

Bad inputs and failures handled (each has a test below):
* ``CODECARBON_TRACKING_MODE=gpu`` / ``CODECARBON_LOG_LEVEL=loud`` -> ReportToError before training
  (``ValueError`` when ``CodeCarbonCallback()`` is built directly);
* ``OfflineEmissionsTracker.start`` raising                        -> isolated tracker error, training goes on;
* CodeCarbon's lock file held by another instance (with
  ``CODECARBON_ALLOW_MULTIPLE_RUNS=false``)                        -> isolated tracker error naming the lock file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tracklink
from helpers import SECRET_ENV, SECRET_ENV_VAR, files_containing, make_trainer, raise_at
from readers import codecarbon as reader

pytestmark = pytest.mark.sdk("codecarbon")

EMISSION_KEYS = ("emissions_kg", "energy_kwh", "emissions_duration_s")


def _summary(trainer) -> dict:
    return next(h for h in trainer.state.log_history if "train_runtime" in h)


def test_emissions_csv_and_summary_reach_the_other_trackers(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tracklink.integrations import CodeCarbonCallback

    callback = CodeCarbonCallback()
    trainer = make_trainer(tmp_path / "out", ["codecarbon", "tensorboard"], callbacks=[callback],
                           logging_dir=str(tmp_path / "tb"))
    assert callback.tracker is None, "nothing is measured before training starts"
    trainer.train()

    (row,) = reader.rows(tmp_path / "out")
    assert row["country_iso_code"] == "USA"  # tracklink's default when CodeCarbon's settings name none
    assert float(row["duration"]) > 0 and float(row["energy_consumed"]) > 0
    summary = _summary(trainer)
    assert summary["emissions_kg"] == pytest.approx(float(row["emissions"]))
    assert summary["energy_kwh"] == pytest.approx(float(row["energy_consumed"]))
    assert summary["emissions_duration_s"] == pytest.approx(float(row["duration"]))
    assert summary["step"] == 20

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    for key in EMISSION_KEYS:
        (event,) = acc.Scalars(f"train/{key}")
        assert event.step == 20
        assert event.value == pytest.approx(summary[key], rel=1e-5)
    assert trainer.callback_handler.tracker_failures() == {}


def test_country_comes_from_codecarbon_settings_and_rows_append(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / ".codecarbon.config").write_text("[codecarbon]\ncountry_iso_code = DEU\n")
    make_trainer(workdir / "out", "codecarbon", max_steps=5, eval_strategy="no", save_strategy="no").train()
    monkeypatch.setenv("CODECARBON_COUNTRY_ISO_CODE", "FRA")  # the environment wins over the file
    make_trainer(workdir / "out", "codecarbon", max_steps=5, eval_strategy="no", save_strategy="no").train()
    assert [r["country_iso_code"] for r in reader.rows(workdir / "out")] == ["DEU", "FRA"]


def test_failed_training_still_writes_its_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    trainer = make_trainer(tmp_path / "out", "codecarbon", callbacks=[raise_at(7, ValueError("boom"))], secrets=True)
    with pytest.raises(ValueError, match="boom"):
        trainer.train()
    (row,) = reader.rows(tmp_path / "out")
    assert float(row["duration"]) > 0
    assert files_containing(tmp_path / "out" / "emissions.csv") == []
    assert not any("emissions_kg" in h for h in trainer.state.log_history)


def test_start_failure_is_an_isolated_tracker_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from codecarbon import OfflineEmissionsTracker

    def broken_start(self):
        raise RuntimeError("no power meter (planted)")

    monkeypatch.setattr(OfflineEmissionsTracker, "start", broken_start)
    trainer = make_trainer(tmp_path / "out", "codecarbon")
    assert trainer.train().global_step == 20
    assert "no power meter (planted)" in trainer.callback_handler.tracker_failures()["codecarbon"]
    assert not any(k in _summary(trainer) for k in EMISSION_KEYS)
    assert reader.rows(tmp_path / "out") == []


def test_lock_held_by_another_instance_is_an_isolated_tracker_error(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from codecarbon.lock import LOCKFILE

    monkeypatch.setenv("CODECARBON_ALLOW_MULTIPLE_RUNS", "false")
    lock = Path(LOCKFILE)
    assert not lock.exists()
    lock.write_text("")  # what a running CodeCarbon instance holds
    try:
        trainer = make_trainer(tmp_path / "out", "codecarbon", max_steps=5, eval_strategy="no", save_strategy="no")
        assert trainer.train().global_step == 5
    finally:
        lock.unlink()
    failure = trainer.callback_handler.tracker_failures()["codecarbon"]
    assert "lock file" in failure and LOCKFILE in failure
    assert trainer.state.stateful_callbacks["TracklinkHub"]["attributes"]["tracker_failures"]["codecarbon"] == failure


@pytest.mark.parametrize(("name", "value"), [("CODECARBON_TRACKING_MODE", "gpu"), ("CODECARBON_LOG_LEVEL", "loud")])
def test_bad_codecarbon_settings_fail_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      name: str, value: str) -> None:
    from tracklink.integrations import CodeCarbonCallback

    monkeypatch.setenv(name, value)
    with pytest.raises(tracklink.ReportToError, match=f"{name}='{value}' is not accepted; accepted values: "):
        make_trainer(tmp_path / "out", "codecarbon")
    with pytest.raises(ValueError, match=f"{name}='{value}' is not accepted"):
        CodeCarbonCallback()  # as an instance in callbacks=, checked at construction
