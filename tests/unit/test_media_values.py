"""Media values (tracklink.media): the types, their snapshot at ``log()``, the routing of each kind to a
tracker's native method or its documented fallback, the byte bound of a queue of images, and bad input.
Runs without any tracker SDK (NumPy is the only third-party need; Pillow, pandas and matplotlib parts
skip when they are absent); what the real SDKs write is read back in tests/integration/test_media.py.

Bad input (each has a test below; the value is left out, training goes on):

at ``log()`` (its form), a warning naming the key, the type and the accepted form:
* a 4-D array or tensor as an image ("a batch of images? Log one Image per sample");
* a 3-D array without an axis of 1, 3 or 4 channels; an empty array; dtype object or complex;
* an image file that does not exist; a file that is not an image;
* a histogram with no values, with values and counts at once, counts without edges, edges not increasing,
  negative counts, ``bins`` that is not an integer >= 1;
* a ragged table (a row with more or fewer cells than columns), a row that is not a list, an array in a
  cell (wrap images in tracklink.Image), a bad image inside a cell;
* ``Text`` of something that is not a string; ``Figure`` of something that is not a figure;
* ``File`` of a missing path or of a directory.

on the tracker's thread (a tracker warning, once per key and tracker):
* NaN or infinite values in a histogram: left out, with one warning naming the key and how many; a
  histogram with no finite value at all is left out;
* a media value under a key the tracker reserves (W&B: ``_*`` and its step metric ``train/global_step``);
* an image over the tracker's size limit (Neptune 32 MiB, Comet 200 MiB as PNG), a histogram with more bins
  than the tracker takes (W&B: 512);
* a kind the tracker can show in no form (a file at TensorBoard, anything at CodeCarbon): dropped;
* a tracker written before media values existed: its media values are dropped, its scalars delivered.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any, ClassVar

import pytest

np = pytest.importorskip("numpy")

import tracklink  # noqa: E402
from tracklink import delivery, media  # noqa: E402
from tracklink.cli import main as cli_main  # noqa: E402
from tracklink.cli import media_matrix, plugin_rows  # noqa: E402
from tracklink.media import Figure, File, Histogram, Image, Media, Table, Text, encode_png, outcome  # noqa: E402
from tracklink.tracker import Tracker  # noqa: E402
from tracklink.values import plain_logs  # noqa: E402


def decode_png(data: bytes) -> Any:
    """A minimal decoder for the PNGs tracklink writes (8 bits, filter 0): the pixels as HxWxC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, _depth, color, *_ = header
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[color]
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, width * channels + 1)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, channels)


def logged(value: Media, key: str = "v") -> Any:
    """The snapshot ``log()`` takes, held as a queued event holds it (the log history's own reference is
    released at the next ``log()``)."""
    out = plain_logs({key: value})
    assert key in out, "the value was left out"
    return out[key].detach()


def left_out(value: Media, caplog: pytest.LogCaptureFixture, key: str = "v") -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        out = plain_logs({key: value, "loss": 1.0})
    assert key not in out and out["loss"] == 1.0, "the value is left out, the rest of the log is kept"
    text = caplog.text
    assert repr(key) in text, text
    return text


# -- the types and their snapshot ----------------------------------------------------------------------


def test_image_layouts_and_pixels() -> None:
    hwc = np.random.default_rng(0).random((8, 6, 3))
    image = logged(Image(hwc, caption="a cat"))
    assert (image.width, image.height, image.caption) == (6, 8, "a cat")
    assert (decode_png(image.png()) == np.round(hwc * 255).astype(np.uint8)).all()
    chw = logged(Image(np.zeros((3, 8, 6), dtype=np.uint8)))
    assert (chw.width, chw.height) == (6, 8), "channels first is read as CxHxW"
    gray = logged(Image(np.full((4, 5), 200, dtype=np.uint8)))
    assert decode_png(gray.png()).shape == (4, 5, 1)
    ambiguous = np.zeros((3, 8, 3))
    assert logged(Image(ambiguous)).width == 8, "an array that reads both ways is HxWxC"
    assert logged(Image(ambiguous, channels="first")).width == 3
    assert logged(Image(np.array([[True, False]]))).pixels()[0, 0, 0] == 255
    assert logged(Image(np.array([[300, -4]]))).pixels()[:, :, 0].tolist() == [[255, 0]], "clipped"
    assert logged(Image([[0.0, 1.0]])).pixels()[:, :, 0].tolist() == [[0, 255]], "nested lists work"


def test_tensor_images_are_detached_copies_in_chw() -> None:
    torch = pytest.importorskip("torch")
    tensor = torch.rand(3, 4, 5, requires_grad=True)
    image = logged(Image(tensor * 1))
    assert (image.width, image.height) == (5, 4), "a tensor is read as CxHxW"
    before = image.pixels().copy()
    with torch.no_grad():
        tensor.add_(1)  # the user's tensor changes after log(): the snapshot does not
    assert (image.pixels() == before).all()
    half = logged(Image(torch.rand(2, 2, dtype=torch.bfloat16)))
    assert half.pixels().shape == (2, 2, 1)


def test_the_snapshot_is_taken_at_log_time() -> None:
    array = np.zeros((4, 4), dtype=np.uint8)
    image = logged(Image(array))
    array[:] = 255
    assert image.pixels().max() == 0
    values = np.arange(10.0)
    histogram = logged(Histogram(values))
    values[:] = 1000
    assert histogram.stats()["max"] == 9.0


def test_image_files_png_passthrough(tmp_path: Path) -> None:
    png = encode_png(np.full((3, 7, 3), 9, dtype=np.uint8))
    path = tmp_path / "x.png"
    path.write_bytes(png)
    image = logged(Image(str(path)))
    path.write_bytes(b"changed")
    assert image.png() == png and (image.width, image.height) == (7, 3)


def test_pil_images_and_other_formats(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    image = logged(Image(pil.new("P", (5, 3))))
    assert decode_png(image.png()).shape == (3, 5, 3)
    path = tmp_path / "x.jpg"
    pil.new("RGB", (9, 4), (255, 0, 0)).save(path)
    from_file = logged(Image(path))
    assert (from_file.width, from_file.height) == (9, 4)
    assert from_file.png()[:4] == b"\x89PNG"


def test_histogram_bins_stats_and_precomputed() -> None:
    values = np.concatenate([np.zeros(10), np.ones(30)])
    histogram = logged(Histogram(values, bins=2))
    counts, edges = histogram.histogram()
    assert counts.tolist() == [10, 30] and edges.tolist() == [0.0, 0.5, 1.0]
    assert histogram.stats() == {"min": 0.0, "max": 1.0, "num": 40.0, "sum": 30.0, "sum_squares": 30.0}
    given = logged(Histogram(np_histogram=([1, 2], [0.0, 1.0, 2.0])))
    assert given.histogram()[0].tolist() == [1, 2] and given.bin_count == 2
    constant = logged(Histogram([5.0, 5.0]))
    assert constant.histogram()[0].sum() == 2, "a constant gets a bin around it"
    drawn = histogram.to_image("h")  # matplotlib when installed, else NumPy bars
    width, height = media.png_size(drawn.png())
    assert (width, height) == (drawn.width, drawn.height) and height > 100


def test_histogram_without_matplotlib_is_drawn_with_numpy() -> None:
    png = media._bars_png(np.array([1, 4, 2]))
    pixels = decode_png(png)
    assert pixels.shape == (256, 512, 3)
    assert ((pixels == (31, 119, 180)).all(axis=2)).any(), "blue bars on white"


def test_nan_in_a_histogram_is_left_out_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    media._warned.clear()
    histogram = logged(Histogram(np.array([1.0, np.nan, np.inf, 2.0])), "weights-nan")
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        counts, _ = histogram.histogram("weights-nan")
        histogram.histogram("weights-nan")
        logged(Histogram(np.array([np.nan, 3.0])), "weights-nan").histogram("weights-nan")
    assert counts.sum() == 2
    assert caplog.text.count("'weights-nan' has 2 NaN or infinite value(s) among 4") == 1
    assert caplog.text.count("weights-nan") == 1, "warned once per key"
    empty = logged(Histogram(np.array([np.nan])), "all-nan")
    with pytest.raises(media.MediaError, match="no finite value"):
        empty.histogram("all-nan")


def test_tables_from_rows_dicts_and_dataframes() -> None:
    table = logged(Table(columns=["x", "label"], rows=[[1, "a"], [np.float32(2.5), None]]))
    assert table.rows == [[1, "a"], [2.5, None]]
    assert table.csv() == "x,label\n1,a\n2.5,\n"
    assert table.markdown().splitlines()[0] == "| x | label |"
    dicts = logged(Table(rows=[{"a": 1}, {"a": 2, "b": "x|y"}]))
    assert dicts.columns == ["a", "b"] and dicts.rows == [[1, None], [2, "x|y"]]
    assert "x\\|y" in dicts.markdown()
    with_image = logged(Table(columns=["id", "img"], data=[[0, Image(np.zeros((2, 3)))]]))
    assert isinstance(with_image.rows[0][1], Image) and with_image.text_rows() == [[0, "[image 3x2]"]]
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1, 2], "b": ["u", "v"]})
    from_frame = logged(Table(frame))
    frame.loc[0, "a"] = 99
    assert from_frame.rows == [[1, "u"], [2, "v"]] and from_frame.dataframe().shape == (2, 2)


def test_text_figure_and_file(tmp_path: Path) -> None:
    assert logged(Text("hello")).text == "hello"
    source = tmp_path / "preds.csv"
    source.write_text("a,b\n")
    file = logged(File(source))
    source.write_text("changed later\n")
    assert Path(file.path).read_text() == "a,b\n" and file.name == "preds.csv"
    assert logged(File(source, name="renamed.csv")).name == "renamed.csv"
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    figure = logged(Figure(fig, close=True))
    assert not plt.get_fignums(), "close=True closed the pyplot figure once copied"
    copy = figure.figure()
    assert copy is not fig and copy.canvas.manager is None, "the copy is not attached to pyplot"
    assert figure.to_image().png()[:4] == b"\x89PNG"


def test_media_values_render_short_in_logs_and_json() -> None:
    import copy
    import json

    image = logged(Image(np.zeros((2, 3, 3))))
    assert str(image) == "<Image image 3x2x3>"
    assert copy.deepcopy(image) is image, "checkpoints deep-copy the log history: no copy of the pixels"
    from tracklink.state import json_fallback

    assert json.loads(json.dumps({"v": image}, default=json_fallback)) == {"v": "<Image image 3x2x3>"}


def test_log_history_releases_payloads_queued_snapshots_keep_them() -> None:
    first = plain_logs({"a": Image(np.zeros((2, 2)))})["a"]  # what the log history holds
    queued = first.detach()  # what delivery.snapshot puts in a tracker's queue
    assert queued is not first and queued.nbytes == first.nbytes
    plain_logs({"loss": 1.0})  # the next log releases the history's hold
    assert queued.png()[:4] == b"\x89PNG", "the queued snapshot still has the pixels"
    del queued
    import gc

    gc.collect()
    with pytest.raises(media.MediaReleased):
        first.png()
    assert str(first) == "<Image image 2x2x1>", "the log history keeps the description"


# -- bad input at log() -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (lambda: Image(np.zeros((2, 3, 8, 8))), "a batch of images? Log one Image per sample"),
    (lambda: Image(np.zeros((5, 8, 8))), "no axis of 1, 3 or 4 channels"),
    (lambda: Image(np.zeros((0, 4))), "which is empty"),
    (lambda: Image(np.array([[object()]])), "dtype object"),
    (lambda: Image(np.zeros((3, 8, 3)), channels="sideways"), "channels='sideways' is invalid"),
    (lambda: Image("/no/such/image.png"), "no image file at"),
    (lambda: Image(42), "got int"),
    (lambda: Histogram([]), "got no values"),
    (lambda: Histogram(), "got no values"),
    (lambda: Histogram([1.0], counts=[1]), "give one of them"),
    (lambda: Histogram(counts=[1, 2]), "2 counts and 0 edges"),
    (lambda: Histogram(counts=[1, 2], edges=[0, 2, 1]), "not finite and increasing"),
    (lambda: Histogram(counts=[-1], edges=[0, 1]), "counts must be finite and >= 0"),
    (lambda: Histogram([1.0], bins=0), "bins=0 is invalid"),
    (lambda: Histogram(["a"]), "dtype <U1"),
    (lambda: Table(columns=["a", "b"], rows=[[1, 2], [3]]), "row 1 has 1 cell(s) but the table has 2 column(s)"),
    (lambda: Table(columns=["a"], rows=[5]), "row 0 is int, not a list of cells"),
    (lambda: Table(columns=["a"], rows=[[np.zeros((4, 4))]]), "wrap an image in tracklink.Image"),
    (lambda: Table(columns=["a"], rows=[[Image(np.zeros((1, 2, 3, 4)))]]), "the image in row 0, column 'a'"),
    (lambda: Table(columns=["a"]), "got no rows"),
    (lambda: Text(3), "got int; accepted: a string"),
    (lambda: Figure("not a figure"), "accepted: a matplotlib Figure"),
    (lambda: File("/no/such/file.csv"), "no file at"),
])
def test_bad_input_is_left_out_at_log_with_the_accepted_form(value: Any, expected: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    made = value()
    text = left_out(made, caplog, "bad/key")
    assert expected in text, text
    assert f"({type(made).__name__})" in text and "accepted: " in text, text


def test_a_directory_is_not_a_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert "is a directory" in left_out(File(tmp_path), caplog)


def test_a_file_that_is_not_an_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    assert "is not" in left_out(Image(path), caplog)


# -- routing at a tracker --------------------------------------------------------------------------------


class Capture(Tracker):
    """Renders images and tables natively, takes files; records every call."""

    name = "capture"
    media: ClassVar[frozenset[str]] = frozenset({"image", "table"})

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.threads: set[str] = set()

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self.calls.append(("metrics", dict(metrics)))

    def log_media(self, values: dict[str, Media], step: int) -> None:
        self.threads.add(threading.current_thread().name)
        self.calls.append(("media", {name: (v.kind, step) for name, v in values.items()}))

    def log_text(self, texts: dict[str, str], step: int) -> None:
        self.calls.append(("text", dict(texts)))

    def log_artifact(self, path: str, name: str, step: int) -> None:
        self.calls.append(("artifact", (name, Path(path).read_bytes()[:4], step)))


class Old(Tracker):
    """A tracker written before media values: metrics and text only."""

    name = "old"

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self.metrics.append(dict(metrics))

    def log_text(self, texts: dict[str, str], step: int) -> None:
        self.metrics.append({"text": 1.0})


def _run(tmp_path: Path, *trackers: Any) -> Any:
    return tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=list(trackers))


def test_declarations_give_the_support_without_an_sdk() -> None:
    assert Capture.media_support() == {"image", "table", "text", "file"}
    assert Old.media_support() == {"text"}
    assert Tracker.media_support() == frozenset()
    assert outcome("histogram", {"image"}) == "image"
    assert outcome("histogram", {"file"}) == "image as PNG file"
    assert outcome("figure", {"text"}) == "dropped"
    assert outcome("table", {"file", "text"}) == "CSV file"
    assert outcome("table", {"text"}) == "Markdown text"
    assert outcome("text", {"file"}) == "text file"
    assert outcome("file", {"image"}) == "dropped"


def test_native_fallback_and_dropped_routes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracker, old = Capture(), Old()
    source = tmp_path / "data.csv"
    source.write_text("x\n")
    with caplog.at_level(logging.INFO, logger="tracklink"), _run(tmp_path, tracker, old) as run:
        for step in (1, 2):
            run.log({"loss": 0.5, "img": Image(np.zeros((4, 4))), "hist": Histogram(np.arange(50.0)),
                     "tab": Table(columns=["a"], rows=[[1]]), "note": Text("hi"), "data": File(source)}, step=step)
    media_calls = [c for kind, c in tracker.calls if kind == "media"]
    assert media_calls[0] == {"train/img": ("image", 1), "train/hist": ("image", 1), "train/tab": ("table", 1)}
    assert ("text", {"train/note": "hi"}) in tracker.calls
    assert ("artifact", ("train/data/data.csv", b"x\n", 1)) in tracker.calls
    assert tracker.threads == {"tracklink-capture"}, "converted and delivered on the tracker's thread"
    assert caplog.text.count("tracker 'capture' has no native histogram: 'hist' is logged as image") == 1
    assert old.metrics.count({"train/loss": 0.5}) == 2, "an old tracker still gets its scalars"
    assert caplog.text.count("tracker 'old' cannot show image values in any form") == 1
    assert "tracker 'old' cannot show file values" in caplog.text
    assert {"text": 1.0} in old.metrics, "Text reaches an old tracker's log_text"


def test_fallback_files_reach_log_artifact(tmp_path: Path) -> None:
    class FilesOnly(Tracker):
        name = "files"

        def __init__(self) -> None:
            self.artifacts: dict[str, bytes] = {}

        def log_artifact(self, path: str, name: str, step: int) -> None:
            self.artifacts[name] = Path(path).read_bytes()[:4]

    tracker = FilesOnly()
    with _run(tmp_path, tracker) as run:
        run.log({"img": Image(np.zeros((4, 4))), "hist": Histogram([1.0, 2.0]),
                 "tab": Table(columns=["a"], rows=[[1]]), "note": Text("hi")}, step=3)
    assert tracker.artifacts == {"train/img/3.png": b"\x89PNG", "train/hist/3.png": b"\x89PNG",
                         "train/tab/3.csv": b"a\n1\n", "train/note/3.txt": b"hi"}


def test_reserved_keys_and_limits_are_tracker_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Strict(Capture):
        name = "strict"
        media: ClassVar[frozenset[str]] = frozenset({"image", "histogram"})
        media_reserved = ("train/global_step", "_*")
        max_image_bytes = 100
        max_histogram_bins = 8

    tracker = Strict()
    noise = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger="tracklink"), _run(tmp_path, tracker) as run:
        run.log({"global_step": Image(np.zeros((2, 2))), "big": Image(noise), "wide": Histogram([1.0, 2.0], bins=9),
                 "ok": Image(np.zeros((2, 2)))}, step=1)
        run.log({"loss": 1.0}, step=2)
    assert [c for kind, c in tracker.calls if kind == "media"] == [{"train/ok": ("image", 1)}]
    assert "left out image 'global_step': 'train/global_step' is a key strict reserves" in caplog.text
    assert "left out image 'big': the image is" in caplog.text and "limit of 9.53674e-05 MiB" in caplog.text
    assert "left out histogram 'wide': it has 9 bins, more than strict's limit of 8" in caplog.text
    assert ("metrics", {"train/loss": 1.0}) in tracker.calls, "training goes on"


def test_a_hook_plugin_receives_the_snapshots_in_on_log(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Hook:
        @tracklink.hookimpl
        def on_log(self, logs: dict[str, Any]) -> None:
            seen.append(logs["img"])

    with _run(tmp_path, Hook()) as run:
        run.log({"img": Image(np.zeros((3, 3)))}, step=1)
    assert isinstance(seen[0], Image) and seen[0].width == 3


def test_trainer_log_keeps_media_and_a_json_state(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from helpers import make_trainer

    trainer = make_trainer(tmp_path / "out", "none", max_steps=2, eval_strategy="no", save_strategy="no")
    tracker = Capture()
    trainer.add_callback(tracker)
    trainer.train()
    trainer.log({"img": Image(np.zeros((2, 2))), "acc": 0.5})
    trainer.callback_handler.wait_for_trackers()
    assert {"train/img": ("image", 2)} in [c for kind, c in tracker.calls if kind == "media"]
    assert "<Image image 2x2x1>" in trainer.state.to_json_string()


# -- memory: the queue's byte bound -------------------------------------------------------------------


def test_queued_events_count_media_bytes() -> None:
    image = logged(Image(np.zeros((100, 100, 3), dtype=np.uint8))).detach()
    scalars = delivery._size({"logs": {"loss": 1.0}})
    assert delivery._size({"logs": {"loss": 1.0, "img": image}}) >= scalars + 30000


def test_a_queue_of_images_is_bounded_by_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracker that cannot keep up: the training thread waits once the queued images hold
    TRACKLINK_QUEUE_BYTES, instead of the queue growing."""
    monkeypatch.setenv("TRACKLINK_QUEUE_BYTES", str(200_000))
    gate = threading.Event()
    peak = [0]

    class Slow(Capture):
        name = "slow"

        def log_media(self, values: dict[str, Media], step: int) -> None:
            gate.wait(10)

    tracker = Slow()
    with _run(tmp_path, tracker) as run:
        channel = next(c for c in delivery._live_channels if c.plugin is tracker)
        done = threading.Event()

        def produce() -> None:
            for step in range(10):
                run.log({"img": Image(np.zeros((100, 100, 3), dtype=np.uint8))}, step=step)  # 30 kB each
                peak[0] = max(peak[0], channel._bytes - channel._freed)
            done.set()

        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(1.0)
        assert not done.is_set(), "the producer waits while the queue is full"
        assert channel.pending < 10
        gate.set()
        producer.join(20)
        assert done.is_set()
    assert peak[0] <= 200_000 + 32_000, peak  # the bound plus the one event that crossed it


# -- the matrix ----------------------------------------------------------------------------------------------


def test_the_cli_shows_the_matrix_from_the_declarations(capsys: pytest.CaptureFixture[str]) -> None:
    rows, _ = plugin_rows("none")
    by_name = {row["name"]: row["media"] for row in rows}
    assert by_name["tensorboard"] == {"image": "native", "histogram": "native", "table": "Markdown text",
                                      "text": "native", "figure": "image", "file": "dropped"}
    assert set(by_name["codecarbon"].values()) == {"dropped"}
    assert media_matrix(object()) == dict.fromkeys(media.KINDS, "as is (on_log)")
    cli_main(["plugins", "--report-to", "none"])
    out = capsys.readouterr().out
    assert "media values at each tracker" in out
    line = next(line for line in out.splitlines() if line.startswith("mlflow ") and "native" in line)
    assert line.split() == ["mlflow", "native", "image", "native", "text", "file", "native", "native"]
