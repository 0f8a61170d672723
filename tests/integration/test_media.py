"""Media values at every tracker, read back from what the real SDK wrote offline: one ``run.log`` at step 3
holding an image, a histogram with a NaN, a table with an image cell, a text, a matplotlib figure and a file;
then the tracker's own files are read (TensorBoard's event reader, the W&B transaction log, the MLflow store,
the Comet archive, Neptune's offline queue, the ClearML offline session, the DVCLive directory, the Flyte
deck, AzureML's offline run output, Trackio's database, SwanLab's record file) and each value is found where
the tracker's documentation (and ``tracklink plugins``' matrix) says: natively, or as its fallback.

Bad input on the tracker's side (tracker warnings; the unit tests cover the rest, see tests/unit/test_media_values.py):
* a media value under a key W&B reserves (``global_step`` becomes ``train/global_step``, W&B's step axis
  here): left out with a warning, the other values of the log kept;
* a histogram with more bins than W&B takes (512): left out with a warning;
* an image over Neptune's limit (32 MiB; lowered for the test): left out with a warning;
* a file at TensorBoard (no files there): dropped with one warning.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow_server import DAGSHUB_OWNER, dagshub_mlflow_server  # noqa: F401 - the session fixture (started on use)

np = pytest.importorskip("numpy")

import tracklink  # noqa: E402
from tracklink import Figure, File, Histogram, Image, Table, Text  # noqa: E402

STEP = 3
PIXELS = (np.arange(16 * 16 * 3).reshape(16, 16, 3) % 256).astype(np.uint8)


def media_values(tmp_path: Path) -> dict[str, Any]:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2), dpi=50)
    ax.plot([1, 3, 2])
    data = tmp_path / "preds.csv"
    data.write_text("id,label\n1,cat\n")
    return {
        "samples": Image(PIXELS, caption="a sample"),
        "weights": Histogram(np.r_[np.random.default_rng(0).normal(size=1000), np.nan], bins=32),
        "preds": Table(columns=["x", "label"], rows=[[1, "cat"], [2, Image(np.zeros((4, 4)))]]),
        "note": Text("hello media"),
        "plot": Figure(fig, close=True),
        "data": File(data),
    }


def log_media(tmp_path: Path, report_to: list[str], extra: dict[str, Any] | None = None, **init: Any) -> Any:
    with tracklink.init(report_to=report_to, dir=tmp_path / "run", project=init.pop("project", "media"),
                        name="media-run", **init) as run:
        run.log({"loss": 0.5}, step=1)
        run.log({**media_values(tmp_path), **(extra or {})}, step=STEP)
        trackers = dict(run.trackers)
    assert run.hub.tracker_failures() == {}, run.hub.tracker_failures()
    return trackers


# -- TensorBoard ---------------------------------------------------------------------------------------


@pytest.mark.sdk("tensorboard")
def test_tensorboard_images_histograms_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    with caplog.at_level(logging.INFO, logger="tracklink"):
        log_media(tmp_path, ["tensorboard"])
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    (image,) = acc.Images("train/samples")
    assert (image.step, image.width, image.height) == (STEP, 16, 16)
    import io

    from PIL import Image as PILImage

    assert (np.asarray(PILImage.open(io.BytesIO(image.encoded_image_string))) == PIXELS).all()
    (histogram,) = acc.Histograms("train/weights")
    assert histogram.step == STEP and histogram.histogram_value.num == 1000, "the NaN is left out"
    assert len(histogram.histogram_value.bucket) == 32 and sum(histogram.histogram_value.bucket) == 1000
    text = acc.Tensors("train/note/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text == "hello media"
    table = acc.Tensors("train/preds/text_summary")[0].tensor_proto.string_val[0].decode()
    assert table.splitlines()[:3] == ["| x | label |", "| --- | --- |", "| 1 | cat |"], "a Markdown table"
    assert [e.step for e in acc.Images("train/plot")] == [STEP], "the figure as an image"
    assert caplog.text.count("tracker 'tensorboard' cannot show file values") == 1
    assert "histogram 'weights' has 1 NaN or infinite value(s) among 1,001" in caplog.text


@pytest.mark.sdk("tensorboard")
def test_trainer_log_reaches_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from helpers import make_trainer

    trainer = make_trainer(tmp_path / "out", ["tensorboard"], logging_dir=str(tmp_path / "tb"), max_steps=5,
                           eval_strategy="no", save_strategy="no")
    trainer.train()
    trainer.log({"samples": Image(PIXELS), "weights": Histogram(trainer.model.a.detach().repeat(10))})
    trainer.callback_handler.wait_for_trackers()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("train/samples")] == [5]
    assert acc.Histograms("train/weights")[0].histogram_value.num == 10
    assert "<Image image 16x16x3>" in json.dumps(trainer.state.log_history[-1], default=str)


# -- W&B -----------------------------------------------------------------------------------------------------


@pytest.fixture
def wandb_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    def teardown() -> None:
        if "wandb" in sys.modules:
            sys.modules["wandb"].teardown()

    teardown()
    root = tmp_path / "wandb"
    for var, sub in (("WANDB_DIR", ""), ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts"),
                     ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(root / sub))
    yield root
    teardown()


@pytest.mark.sdk("wandb")
def test_wandb_images_histograms_tables_text_and_files(tmp_path: Path, wandb_dir: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from readers.wandb import read_runs

    extra = {"global_step": Image(PIXELS), "wide": Histogram([1.0, 2.0], bins=600)}
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        log_media(tmp_path, ["wandb"], extra)
    sys.modules["wandb"].teardown()  # waits for wandb-core to write the transaction log
    (run,) = read_runs(wandb_dir)
    files = run.path.parent / "files"
    row = next(r for r in run.history if r.get("train/samples/_type"))
    assert row["train/global_step"] == STEP
    assert row["train/samples/_type"] == "image-file" and row["train/samples/caption"] == "a sample"
    from PIL import Image as PILImage

    assert (np.asarray(PILImage.open(files / row["train/samples/path"])) == PIXELS).all()
    assert row["train/weights/_type"] == "histogram" and sum(row["train/weights/values"]) == 1000
    assert len(row["train/weights/bins"]) == 33
    assert row["train/preds/_type"] == "table-file"
    table = json.loads((files / row["train/preds/path"]).read_text())
    assert table["columns"] == ["x", "label"] and table["data"][0] == [1, "cat"]
    (table_artifact,) = [a for a in run.artifacts if a["type"] == "run_table"]
    assert any(f.startswith("media/images/") for f in table_artifact["files"]), "an image cell stays an image"
    assert row["train/plot/_type"] == "image-file", "the figure as an image"
    assert any(r.get("train/note") == "hello media" for r in run.history)
    (artifact,) = [a for a in run.artifacts if a["type"] == "file"]
    assert (artifact["name"], artifact["type"], artifact["files"]) == ("train-data", "file", ["preds.csv"])
    assert "step_3" in artifact["aliases"]
    # bad input, as tracker warnings: the rest of the log is there
    assert "left out image 'global_step': 'train/global_step' is a key wandb reserves" in caplog.text
    assert "left out histogram 'wide': it has 600 bins, more than wandb's limit of 512" in caplog.text
    assert not any("train/wide/_type" in r for r in run.history)


# -- MLflow and DagsHub ------------------------------------------------------------------------------------


def _artifacts(client: Any, run_id: str, path: str | None = None) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found.update(_artifacts(client, run_id, item.path))
        else:
            found[item.path] = item.path
    return found


def _check_mlflow(client: Any, run_id: str, tmp_path: Path) -> None:
    paths = set(_artifacts(client, run_id))
    images = {p for p in paths if p.startswith("images/") and p.endswith(".png")}
    assert {p.split("+")[0] for p in images} == {"images/samples", "images/weights"}, images
    assert all("+step+3+" in p for p in images), "logged with key and step (MLflow's image grid)"
    assert {"figures/plot/3.png", "tables/preds/3.json", "media/note/3.txt", "media/data/preds.csv"} <= paths
    table = json.loads(Path(client.download_artifacts(run_id, "tables/preds/3.json", str(tmp_path))).read_text())
    assert table["columns"] == ["x", "label"] and table["data"] == [[1, "cat"], [2, "[image 4x4]"]]
    sample = next(p for p in images if p.startswith("images/samples"))
    from PIL import Image as PILImage

    assert (np.asarray(PILImage.open(client.download_artifacts(run_id, sample, str(tmp_path)))) == PIXELS).all()
    note = client.download_artifacts(run_id, "media/note/3.txt", str(tmp_path))
    assert Path(note).read_text() == "hello media"


@pytest.mark.sdk("mlflow")
def test_mlflow_images_figures_tables_and_artifacts(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    trackers = log_media(workdir, ["mlflow"])
    run_id = trackers["mlflow"].identity["run_id"]
    _check_mlflow(MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}"), run_id, workdir / "dl")


@pytest.mark.sdk("tensorboard", "mlflow")
def test_media_recorded_offline_and_synced_reads_back_in_tensorboard_and_mlflow(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run journal keeps media values as files beside it: a run recorded with TRACKLINK_OFFLINE=1 and sent
    with ``tracklink sync`` shows the same images, histograms, tables and texts as a live run (a figure comes
    back as its image, see docs/journal.md)."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tracklink import cli
    from tracklink.journal import JournalFile, journal_files

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(workdir / "tb"))
    monkeypatch.setenv("TRACKLINK_OFFLINE", "1")
    log_media(workdir, ["tensorboard", "mlflow"])
    monkeypatch.delenv("TRACKLINK_OFFLINE")
    assert not (workdir / "tb").exists(), "offline: nothing was sent"
    assert cli.main(["sync", "--quiet", str(workdir / "run")]) == 0

    acc = EventAccumulator(str(workdir / "tb"), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    (image,) = acc.Images("train/samples")
    import io

    from PIL import Image as PILImage

    assert image.step == STEP and (np.asarray(PILImage.open(io.BytesIO(image.encoded_image_string))) == PIXELS).all()
    (histogram,) = acc.Histograms("train/weights")
    assert histogram.step == STEP and histogram.histogram_value.num == 1000, "the statistics of the logged values"
    assert len(histogram.histogram_value.bucket) == 32 and sum(histogram.histogram_value.bucket) == 1000
    assert acc.Tensors("train/note/text_summary")[0].tensor_proto.string_val[0].decode() == "hello media"
    table = acc.Tensors("train/preds/text_summary")[0].tensor_proto.string_val[0].decode()
    assert table.splitlines()[:3] == ["| x | label |", "| --- | --- |", "| 1 | cat |"]
    assert [e.step for e in acc.Images("train/plot")] == [STEP]

    (path,) = journal_files(workdir / "run")
    journal = JournalFile(path)
    run_id = journal.cursor("mlflow").identity["run_id"]  # type: ignore[union-attr]
    journal.close()
    client = MlflowClient(tracking_uri=uri)
    paths = set(_artifacts(client, run_id))
    images = {p.split("+")[0] for p in paths if p.startswith("images/") and p.endswith(".png")}
    assert images == {"images/samples", "images/weights", "images/plot"}, paths
    assert {"tables/preds/3.json", "media/note/3.txt", "media/data/preds.csv"} <= paths
    table_json = json.loads(Path(client.download_artifacts(run_id, "tables/preds/3.json", str(workdir / "dl")))
                            .read_text())
    assert table_json["data"] == [[1, "cat"], [2, "[image 4x4]"]]
    csv = Path(client.download_artifacts(run_id, "media/data/preds.csv", str(workdir / "dl"))).read_text()
    assert csv == "id,label\n1,cat\n"


@pytest.mark.sdk("dagshub", "mlflow")
@pytest.mark.slow
def test_dagshub_renders_media_through_mlflow(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                              dagshub_mlflow_server: Any) -> None:  # noqa: F811
    monkeypatch.setenv("DAGSHUB_USER_TOKEN", "dagshub-test-token")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dagshub_mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", DAGSHUB_OWNER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "dagshub-test-token")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"dh-media-{uuid.uuid4().hex[:8]}")
    trackers = log_media(workdir, ["dagshub"])
    _check_mlflow(dagshub_mlflow_server.client(), trackers["dagshub"].identity["run_id"], workdir / "dl")


# -- Comet ----------------------------------------------------------------------------------------------------


@pytest.mark.sdk("comet_ml")
def test_comet_images_histograms_tables_and_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from readers.comet import read_archives

    root = tmp_path / "comet"
    root.mkdir()
    monkeypatch.setenv("COMET_OFFLINE_DIRECTORY", str(root))
    monkeypatch.setenv("COMET_LOG_ASSETS", "FALSE")
    log_media(tmp_path, ["comet_ml"])
    (archive,) = read_archives(root)
    images = {i["name"]: i for i in archive.images}
    assert set(images) == {"train/samples", "train/plot"}
    assert images["train/samples"]["step"] == STEP and images["train/samples"]["metadata"] == {"caption": "a sample"}
    import io

    from PIL import Image as PILImage

    assert (np.asarray(PILImage.open(io.BytesIO(images["train/samples"]["data"]))) == PIXELS).all()
    (histogram,) = archive.histograms["train/weights"]
    assert histogram["step"] == STEP
    assert sum(count for _index, count in histogram["content"]["index_values"]) == 1000
    assert archive.assets["train_preds-3.csv"].decode().splitlines() == ["x,label", "1,cat", "2,[image 4x4]"]
    assert archive.assets["train/data/preds.csv"] == b"id,label\n1,cat\n"
    assert archive.asset_steps["train/data/preds.csv"] == STEP
    assert [t["text"] for t in archive.texts] == ["hello media"]


# -- Neptune ------------------------------------------------------------------------------------------------


@pytest.mark.sdk("neptune")
@pytest.mark.filterwarnings("ignore:jsonschema.RefResolver is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*NVML.*")
def test_neptune_image_series_files_and_strings(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import base64

    from readers.neptune import offline_runs
    from tracklink.integrations import NeptuneCallback

    monkeypatch.setattr(NeptuneCallback, "max_image_bytes", 100_000)  # Neptune's is 32 MiB
    noise = np.random.default_rng(2).integers(0, 255, (256, 256, 3), dtype=np.uint8)  # about 200 kB as PNG
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        log_media(workdir, ["neptune"], {"big": Image(noise)})
    (run,) = offline_runs(workdir)
    (step, sample), = run.series["finetuning/train/samples"]
    assert step == STEP and sample["description"] == "a sample"
    import io

    from PIL import Image as PILImage

    assert (np.asarray(PILImage.open(io.BytesIO(base64.b64decode(sample["data"])))) == PIXELS).all()
    assert [s for s, _ in run.series["finetuning/train/weights"]] == [STEP], "the histogram as an image"
    assert [s for s, _ in run.series["finetuning/train/plot"]] == [STEP]
    assert run.series["finetuning/train/note"] == [(STEP, "hello media")]
    uploaded = {path: Path(name) for path, name in run.files.items()}
    assert {"finetuning/train/preds/3", "finetuning/train/data/preds"} <= set(uploaded)
    assert "finetuning/train/big" not in run.series
    assert "left out image 'big': the image is" in caplog.text and "neptune's limit" in caplog.text


# -- ClearML ------------------------------------------------------------------------------------------------


@pytest.mark.sdk("clearml")
@pytest.mark.filterwarnings("ignore:.*deprecated.*use:DeprecationWarning")
def test_clearml_debug_samples_plots_and_artifacts(tmp_path: Path) -> None:
    from readers.clearml import read_session

    trackers = log_media(tmp_path, ["clearml"])
    session = read_session(trackers["clearml"].identity["task_id"])
    images = [e for e in session.events if e.get("type") == "training_debug_image"]
    assert {(e["metric"], e["iter"]) for e in images} == {("samples", STEP), ("plot", STEP)}
    sample = next(e for e in images if e["metric"] == "samples")
    stored = next(session.folder.rglob(Path(sample["key"]).name + "*"))
    assert stored.is_file() and stored.stat().st_size > 0
    plots = {e["metric"]: json.loads(e["plot_str"]) for e in session.events if e.get("type") == "plot"}
    assert sum(plots["weights"]["data"][0]["y"]) == 1000 and len(plots["weights"]["data"][0]["y"]) == 32
    table = plots["preds"]["data"][0]
    assert table["type"] == "table" and table["header"]["values"][:2] == ["x", "label"]
    artifacts = {a["key"]: a for a in session.task["execution"]["artifacts"]}
    assert Path(artifacts["data/preds.csv"]["uri"]).read_text() == "id,label\n1,cat\n"
    log = (session.folder / "log.jsonl").read_text() if (session.folder / "log.jsonl").is_file() else ""
    assert "hello media" in log


# -- DVCLive -------------------------------------------------------------------------------------------------


@pytest.mark.sdk("dvclive")
def test_dvclive_images_plots_and_artifacts(workdir: Path) -> None:
    log_media(workdir, ["dvclive"])
    live = workdir / "dvclive"
    from PIL import Image as PILImage

    assert (np.asarray(PILImage.open(live / "plots" / "images" / "samples" / f"{STEP}.png")) == PIXELS).all()
    assert (live / "plots" / "images" / "plot" / f"{STEP}.png").is_file(), "the figure as an image"
    points = json.loads((live / "plots" / "custom" / "weights.json").read_text())
    assert len(points) == 32 and sum(p["count"] for p in points) == 1000
    assert (live / "artifacts" / "preds" / f"{STEP}.csv").read_text().splitlines()[0] == "x,label"
    assert (live / "artifacts" / "note" / f"{STEP}.txt").read_text() == "hello media"
    assert (live / "artifacts" / "data" / "preds.csv").read_text() == "id,label\n1,cat\n"


# -- Flyte ------------------------------------------------------------------------------------------------------


@pytest.mark.sdk("flytekit")
def test_flyte_media_deck(tmp_path: Path) -> None:
    from flytekit import current_context, task

    seen: dict[str, Any] = {}

    @task(enable_deck=True)
    def log_in_a_task(folder: str) -> int:
        log_media(Path(folder), ["flyte"])
        seen.update({d.name: d.html for d in current_context().decks})
        return 0

    log_in_a_task(folder=str(tmp_path))
    deck = seen["Media"]
    assert "samples (step 3)" in deck and 'src="data:image/png;base64,' in deck
    assert "<figcaption>a sample</figcaption>" in deck
    assert "<td>[image 4x4]</td>" in deck and "<pre>hello media</pre>" in deck
    assert deck.count("<img") == 3, "the image, the histogram and the figure"


# -- Azure ML --------------------------------------------------------------------------------------------------


@pytest.mark.sdk("azureml.core")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_azureml_images_tables_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from readers.azureml import parse_stdout

    log_media(tmp_path, ["azure_ml"])
    log = parse_stdout(capsys.readouterr().out)
    assert {k: log.kinds[k] for k in ("samples", "weights", "plot", "preds", "note")} == {
        "samples": "image", "weights": "image", "plot": "image", "preds": "table", "note": "scalar"}
    assert log.metrics["preds"] == [{"x": [1, 2], "label": ["cat", "[image 4x4]"]}]
    assert log.metrics["note"] == ["hello media"]
    assert "outputs/media/data/preds.csv" in log.files


# -- Trackio ---------------------------------------------------------------------------------------------------


@pytest.mark.sdk("trackio")
def test_trackio_images_histograms_tables_and_markdown(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from readers import trackio as reader

    project = f"media-{uuid.uuid4().hex[:8]}"
    trackers = log_media(workdir, ["trackio"], project=project)
    run_id = trackers["trackio"].identity["run_id"]
    rows = [metrics for step, metrics in reader.rows(project, run_id) if step == STEP]
    merged = {k: v for row in rows for k, v in row.items()}
    assert merged["train/samples"]["_type"] == "trackio.image" and merged["train/samples"]["caption"] == "a sample"
    media_root = reader.database(project).parent / "media"
    from PIL import Image as PILImage

    stored = np.asarray(PILImage.open(media_root / merged["train/samples"]["file_path"]))
    assert (stored[:, :, :3] == PIXELS).all()
    assert merged["train/weights"]["_type"] == "trackio.histogram" and sum(merged["train/weights"]["values"]) == 1000
    assert merged["train/preds"]["_type"] == "trackio.table"
    assert merged["train/note"] == {"_type": "trackio.markdown", "_value": "hello media"}
    assert merged["train/plot"]["_type"] == "trackio.image"


# -- SwanLab ---------------------------------------------------------------------------------------------------


@pytest.mark.sdk("swanlab")
def test_swanlab_images_and_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    from readers import swanlab as reader

    monkeypatch.setenv("SWANLAB_LOG_DIR", str(tmp_path / "swanlog"))
    log_media(workdir, ["swanlab"])
    (run_dir,) = reader.run_dirs(tmp_path / "swanlog")
    columns = reader.columns(run_dir)
    assert {k: columns[k] for k in ("train/samples", "train/weights", "train/plot", "train/note", "train/preds")} == {
        "train/samples": "COLUMN_TYPE_IMAGE", "train/weights": "COLUMN_TYPE_IMAGE", "train/plot": "COLUMN_TYPE_IMAGE",
        "train/note": "COLUMN_TYPE_TEXT", "train/preds": "COLUMN_TYPE_TEXT"}
    media = {r["media"]["key"]: r["media"] for r in reader.records(run_dir) if "media" in r}
    assert media["train/samples"]["step"] == str(STEP)
    (item,) = media["train/samples"]["value"]["items"]
    from PIL import Image as PILImage

    stored = next(run_dir.rglob(item["filename"]))
    assert (np.asarray(PILImage.open(stored)) == PIXELS).all()
    assert "train/data" not in columns, "files have no place in SwanLab"
