"""Media values: images, histograms, tables, text, figures and files, logged like numbers.

``run.log({"samples": tracklink.Image(batch[0]), "weights": tracklink.Histogram(layer.weight)}, step=10)``
(and ``Trainer.log``, and any ``on_log``) carries media values next to scalars. The types:

``Image(data, caption=None, channels=None)``  a NumPy array or torch tensor (``HxW``, ``HxWxC`` or ``CxHxW``,
    ``C`` = 1, 3 or 4; uint8 as is, floats in [0, 1], other integers clipped to [0, 255]), a PIL image or
    the path of an image file;
``Histogram(values, bins=64)`` or ``Histogram(counts=..., edges=...)``  values of any shape (flattened), or
    precomputed bins (``np_histogram=(counts, edges)`` as W&B takes them);
``Table(columns=[...], rows=[[...], ...])`` or ``Table(dataframe=df)``  cells are numbers, text, ``None`` or
    ``Image`` values; rows may also be dicts (their keys are the columns);
``Text(text)``  a string (plain strings in a log are text too);
``Figure(fig, close=False)``  a matplotlib figure;
``File(path, name=None)`` (alias ``Artifact``)  a file to upload as an artifact.

Life of a value (see docs/media.md):

1. **At ``log()``, on the training thread**, :func:`tracklink.values.plain_logs` takes a *snapshot* of each
   value (:meth:`Media.freeze`): tensors are detached and copied off the device once, arrays and tables are
   copied, a figure is pickled, a file is copied aside (hard-linked over 64 MiB). Nothing is encoded there. A value of
   the wrong form (a 4-D array as an image, a ragged table, a missing file) is left out with a warning naming
   its key and the accepted form; training goes on.
2. **In the queue**, each event holds a snapshot (:meth:`Media.detach`) that counts its bytes
   (:attr:`Media.nbytes`) against ``TRACKLINK_QUEUE_BYTES``: a queue full of images makes the training
   thread wait (back-pressure), it never grows without bound. The trainer's ``log_history`` keeps a
   description of the value; its payload is released there at the next ``log()`` and freed once every
   tracker has delivered it.
3. **On each tracker's worker thread**, the tracker base class routes the value: to the tracker's
   ``log_media`` when it renders that kind natively, else through the documented fallback (:func:`outcome`):
   a histogram or a figure becomes an image, an image without native support becomes a PNG file, a table a
   CSV file (or Markdown text), text a text file; what a tracker can show in none of these ways is dropped.
   Encoding (PNG, CSV, binning) happens here, once per value, shared by the trackers.

Heavy libraries (NumPy, torch, PIL, pandas, matplotlib) are imported only when a value that needs them is
logged or converted: ``import tracklink`` stays light.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import threading
import weakref
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

logger = logging.getLogger("tracklink")

__all__ = [
    "FALLBACKS",
    "KINDS",
    "NATIVE_KINDS",
    "Artifact",
    "Figure",
    "File",
    "Histogram",
    "Image",
    "Media",
    "MediaError",
    "Table",
    "TempFiles",
    "Text",
    "encode_png",
    "outcome",
    "release_logged",
]

#: Every kind of media value, in the order of the documentation's matrix.
KINDS = ("image", "histogram", "table", "text", "figure", "file")
#: The kinds a tracker's ``log_media`` may declare (text goes to ``log_text``, files to ``log_artifact``).
NATIVE_KINDS = frozenset({"image", "histogram", "table", "figure"})
#: What each kind becomes where a tracker cannot render it natively, in order of preference.
FALLBACKS: dict[str, tuple[str, ...]] = {
    "image": ("PNG file",),
    "histogram": ("image", "image as PNG file"),
    "figure": ("image", "image as PNG file"),
    "table": ("CSV file", "Markdown text"),
    "text": ("text file",),
    "file": (),
}

#: Accepted forms, quoted in every message about a value of the wrong form.
ACCEPTED = {
    "image": "accepted: a NumPy array or torch tensor of shape HxW, HxWxC or CxHxW with C = 1, 3 or 4 (uint8, "
             "bool, integer, or float in [0, 1]), a PIL image, or an image file's path",
    "histogram": "accepted: numeric values (any shape, flattened), or counts with edges "
                 "(len(edges) == len(counts) + 1, increasing)",
    "table": "accepted: columns and rows of equal length (or dict rows, or a pandas DataFrame), cells being "
             "numbers, text, None or tracklink.Image",
    "text": "accepted: a string",
    "figure": "accepted: a matplotlib Figure",
    "file": "accepted: the path of an existing file",
}

_FIGURE_DPI_LIMIT = 600


class MediaError(ValueError):
    """A media value that cannot be logged (the message names the accepted form)."""


class MediaReleased(RuntimeError):
    """The payload of a logged value was released (the log history keeps only its description)."""


class _Payload:
    """What a snapshot holds: the copied data plus what is derived from it once (PNG bytes, bins)."""

    __slots__ = ("__weakref__", "cache", "lock", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.cache: dict[str, Any] = {}
        self.lock = threading.RLock()  # one derivation may use another (stats -> finite values)

    def derived(self, name: str, make: Callable[[], Any]) -> Any:
        """``make()`` computed once per payload (trackers on several worker threads share it)."""
        with self.lock:
            if name not in self.cache:
                self.cache[name] = make()
            return self.cache[name]


_held: list[Media] = []
_held_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()


def _warn_once(kind: str, key: str, message: str) -> None:
    if (kind, key) not in _warned:
        _warned.add((kind, key))
        logger.warning("tracklink: %s (warned once per key)", message)


def holding() -> bool:
    """Whether values logged earlier still hold their payload in the log history."""
    return bool(_held)


def release_logged(keep: Iterable[Media] = ()) -> None:
    """Release the payloads of the values logged before (their queued snapshots keep them until every
    tracker delivered them), and hold ``keep`` until the next call. Called by every ``log()``."""
    fresh = list(keep)
    with _held_lock:
        old, _held[:] = list(_held), fresh
    for value in old:
        if value not in fresh:
            value._release()


class Media:
    """Base class of media values (see the module documentation)."""

    kind: ClassVar[str] = ""

    def __init__(self) -> None:
        self._payload: _Payload | None = None
        self._weak: weakref.ReferenceType[_Payload] | None = None
        self._frozen = False
        self.problem: str | None = None
        self.meta: dict[str, Any] = {}

    # -- the training thread ---------------------------------------------------------------------

    def freeze(self) -> Media:
        """A snapshot of this value: its data copied now (off the device, detached), nothing encoded.
        Never raises: a value of the wrong form gets a ``problem`` (the accepted form) instead."""
        if self._frozen:
            return self
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._frozen = True
        clone.meta = dict(self.meta)
        try:
            payload = clone._capture()
            clone._payload = _Payload(payload)
            clone._weak = weakref.ref(clone._payload)
        except MediaError as exc:
            clone.problem = str(exc)
        except Exception as exc:  # a surprising input: reported like a wrong form, never raised
            clone.problem = f"{type(exc).__name__}: {exc}; {ACCEPTED[self.kind]}"
        clone._drop_inputs()
        return clone

    def detach(self) -> Media:
        """The snapshot a queued event holds (called by :func:`tracklink.delivery.snapshot`): frozen once, the
        payload shared, held strongly until the event is delivered."""
        frozen = self.freeze()
        clone = object.__new__(type(frozen))
        clone.__dict__.update(frozen.__dict__)
        payload = frozen._weak() if frozen._weak is not None else None
        clone._payload = payload
        if payload is None and frozen.problem is None and frozen._weak is not None:
            clone.problem = "its data was released (a log_history entry, not a logged value)"
        return clone

    def _release(self) -> None:
        self._payload = None

    def _capture(self) -> Any:
        raise NotImplementedError

    def _drop_inputs(self) -> None:
        """Forget the caller's objects (tensors, arrays, figures) once copied."""

    # -- the worker thread -----------------------------------------------------------------------

    @property
    def data(self) -> Any:
        payload = self._payload or (self._weak() if self._weak is not None else None)
        if payload is None:
            if not self._frozen:
                raise MediaReleased("this value was not logged yet (its snapshot is taken at log())")
            raise MediaReleased(f"the {self.kind} was delivered and its data released; the log history keeps "
                                "its description only")
        return payload.value

    def _derived(self, name: str, make: Callable[[], Any]) -> Any:
        payload = self._payload or (self._weak() if self._weak is not None else None)
        if payload is None:
            self.data  # noqa: B018 - raises MediaReleased
        assert payload is not None
        return payload.derived(name, make)

    @property
    def nbytes(self) -> int:
        """Bytes the snapshot holds in memory (what a queued event counts against ``TRACKLINK_QUEUE_BYTES``)."""
        return int(self.meta.get("nbytes", 0))

    def describe(self) -> str:
        return self.kind

    def __repr__(self) -> str:
        if not self._frozen:
            return f"<{type(self).__name__} (not logged yet)>"
        return f"<{type(self).__name__} {self.describe()}>"

    __str__ = __repr__

    def __copy__(self) -> Media:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Media:
        return self  # a snapshot never changes; checkpoints deep-copy the log history at every save

    def __reduce__(self) -> Any:
        # a pickled log history (e.g. a TrainerState sent to a search worker) keeps the description
        return (str, (repr(self),))


# -- arrays and tensors ---------------------------------------------------------------------------------


def _shape_of(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    try:
        return tuple(int(s) for s in shape) if shape is not None else None
    except TypeError:
        return None


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _to_numpy(value: Any) -> Any:
    """A NumPy copy of an array, a tensor (detached, off the device) or a sequence."""
    import numpy as np  # third-party, imported only when a value is logged

    if _is_tensor(value):
        tensor = value.detach()
        if str(tensor.dtype) in ("torch.bfloat16", "torch.float16"):
            tensor = tensor.float()  # NumPy has no bfloat16; float16 binned and drawn as float32
        on_host = tensor.device.type == "cpu"
        tensor = tensor.cpu()
        array = tensor.numpy()
        return array.copy() if on_host else array  # .cpu() of a device tensor is already a copy
    return np.array(value, copy=True)


def _kind_of_dtype(array: Any) -> str:
    return str(getattr(array.dtype, "kind", "O"))


# -- PNG without PIL ---------------------------------------------------------------------------------------


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(pixels: Any, level: int = 6) -> bytes:
    """PNG bytes of a uint8 array ``HxW`` or ``HxWxC`` (C = 1, 2, 3 or 4), with NumPy and zlib only (zlib
    releases the GIL while it compresses)."""
    import numpy as np

    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    height, width, channels = array.shape
    color = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = np.empty((height, width * channels + 1), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "none" for every row
    rows[:, 1:] = array.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
            + _chunk(b"IEND", b""))


def png_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's header, or ``None`` when ``data`` is not a PNG."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


# -- the types ------------------------------------------------------------------------------------------


class Image(Media):
    """An image: an array or tensor (``HxW``, ``HxWxC``, ``CxHxW``), a PIL image or an image file's path.

    ``channels="first"``/``"last"`` settles a shape that reads both ways (``3x32x3``); otherwise a tensor
    is read as ``CxHxW`` (torch's convention) and an array as ``HxWxC`` when both fit. Pixel values: uint8 as
    they are, bool as black/white, floats in [0, 1] (clipped; NaN as 0), other integers clipped to [0, 255].
    """

    kind = "image"

    def __init__(self, data: Any, caption: str | None = None, *, channels: str | None = None) -> None:
        super().__init__()
        self._input = data
        self.caption = None if caption is None else str(caption)
        self.channels = channels

    @classmethod
    def from_png(cls, data: bytes, caption: str | None = None) -> Image:
        """An image already encoded as PNG (a fallback drawing, a decoded file)."""
        image = cls(data, caption).freeze()
        assert isinstance(image, Image)
        return image

    def _capture(self) -> Any:
        data = self._input
        if self.channels not in (None, "first", "last"):
            raise MediaError(f"channels={self.channels!r} is invalid; accepted: 'first', 'last' or None")
        if isinstance(data, (bytes, bytearray)):
            return self._encoded(bytes(data))
        if isinstance(data, (str, os.PathLike)):
            path = Path(data)
            if not path.is_file():
                raise MediaError(f"no image file at {str(path)!r}; {ACCEPTED['image']}")
            return self._encoded(path.read_bytes(), source=str(path))
        if type(data).__module__.startswith("PIL.") and hasattr(data, "mode"):
            import numpy as np

            mode = data.mode
            if mode not in ("L", "LA", "RGB", "RGBA", "1"):
                data = data.convert("RGBA" if "A" in mode or "transparency" in data.info else "RGB")
            array = np.array(data, copy=True)
            if array.dtype == bool:
                array = array.astype(np.uint8) * 255
            return self._pixels(array, from_pil=True)
        shape = _shape_of(data)
        if shape is None and not isinstance(data, (list, tuple)):
            raise MediaError(f"got {type(data).__name__}; {ACCEPTED['image']}")
        layout = self._layout(shape if shape is not None else _nested_shape(data), _is_tensor(data))
        array = _to_numpy(data)
        if _kind_of_dtype(array) not in "biuf":
            raise MediaError(f"got dtype {array.dtype}; {ACCEPTED['image']}")
        self.meta["layout"] = layout
        return self._pixels(array, layout=layout)

    def _layout(self, shape: tuple[int, ...], tensor: bool) -> str:
        where = f"got shape {shape}"
        if len(shape) == 2:
            layout = "HW"
        elif len(shape) == 3:
            last, first = shape[2] in (1, 3, 4), shape[0] in (1, 3, 4)
            if self.channels == "first" and first:
                layout = "CHW"
            elif self.channels == "last" and last:
                layout = "HWC"
            elif self.channels is None and (last or first):
                layout = "CHW" if first and (tensor or not last) else "HWC"
            else:
                raise MediaError(f"{where}: no axis of 1, 3 or 4 channels"
                                 + (f" where channels={self.channels!r} says" if self.channels else "")
                                 + f"; {ACCEPTED['image']}")
        elif len(shape) == 4:
            raise MediaError(f"{where}, a batch of images? Log one Image per sample (e.g. "
                             f"[tracklink.Image(x) for x in batch[:4]] under keys of their own); {ACCEPTED['image']}")
        else:
            raise MediaError(f"{where}; {ACCEPTED['image']}")
        if 0 in shape:
            raise MediaError(f"{where}, which is empty; {ACCEPTED['image']}")
        return layout

    def _pixels(self, array: Any, layout: str = "HWC", from_pil: bool = False) -> Any:
        if layout == "CHW":
            array = array.transpose(1, 2, 0)  # a view: the copy is already made
        height, width = int(array.shape[0]), int(array.shape[1])
        channels = 1 if array.ndim == 2 else int(array.shape[2])
        self.meta.update(width=width, height=height, channels=channels, nbytes=int(array.nbytes),
                         dtype=str(array.dtype))
        return array

    def _encoded(self, data: bytes, source: str | None = None) -> Any:
        size = png_size(data)
        if size is None:
            size = _pil_size(data, source)
        self.meta.update(width=size[0], height=size[1], nbytes=len(data), encoded=True)
        if source:
            self.meta["source"] = source
        return data

    def _drop_inputs(self) -> None:
        self._input = None

    # worker side

    @property
    def width(self) -> int:
        return int(self.meta.get("width", 0))

    @property
    def height(self) -> int:
        return int(self.meta.get("height", 0))

    def describe(self) -> str:
        if self.problem:
            return f"image (left out: {self.problem[:60]})"
        channels = self.meta.get("channels")
        return f"image {self.width}x{self.height}" + (f"x{channels}" if channels else "") + \
            (f" {self.caption!r}" if self.caption else "")

    def pixels(self) -> Any:
        """``HxWxC`` uint8 pixels (C = 1, 3 or 4); encoded images are decoded with PIL."""
        return self._derived("pixels", self._make_pixels)

    def _make_pixels(self) -> Any:
        import numpy as np

        data = self.data
        if isinstance(data, bytes):
            return np.asarray(self.pil())
        array = data if data.ndim == 3 else data[:, :, None]
        kind = _kind_of_dtype(array)
        if kind == "b":
            return array.astype(np.uint8) * 255
        if array.dtype == np.uint8:
            return np.ascontiguousarray(array)
        if kind == "f":
            return (np.nan_to_num(np.clip(array, 0.0, 1.0), nan=0.0) * 255 + 0.5).astype(np.uint8)
        return np.clip(array, 0, 255).astype(np.uint8)

    def png(self) -> bytes:
        """The image as PNG bytes (encoded once, on the worker thread that first asks)."""
        return bytes(self._derived("png", self._make_png))

    def _make_png(self) -> bytes:
        data = self.data
        if isinstance(data, bytes):
            if png_size(data) is not None:
                return data
            buffer = io.BytesIO()
            self.pil().save(buffer, format="PNG")
            return buffer.getvalue()
        return encode_png(self.pixels())

    def pil(self) -> Any:
        """A PIL image (needs Pillow)."""
        try:
            from PIL import Image as PILImage  # third-party, optional: only trackers that take PIL images
        except ImportError as exc:
            raise MediaError("this tracker needs Pillow to take the image (pip install pillow)") from exc
        data = self.data
        if isinstance(data, bytes):
            image = PILImage.open(io.BytesIO(data))
            image.load()
            return image
        pixels = self.pixels()
        return PILImage.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def _pil_size(data: bytes, source: str | None) -> tuple[int, int]:
    try:
        from PIL import Image as PILImage
    except ImportError:
        raise MediaError(f"{source or 'the image'} is not a PNG; other formats need Pillow (pip install pillow)") \
            from None
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            return int(image.size[0]), int(image.size[1])
    except Exception as exc:
        raise MediaError(f"{source or 'the data'} is not an image Pillow can read ({exc}); {ACCEPTED['image']}") \
            from None


def _nested_shape(value: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(value, (list, tuple)):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


class Histogram(Media):
    """A histogram of ``values`` (any shape, flattened; binned into ``bins`` equal bins on the tracker's
    thread), or precomputed ``counts`` and ``edges`` (``np_histogram=(counts, edges)`` is the same).
    NaN and infinite values are left out, with a warning naming the key."""

    kind = "histogram"

    def __init__(self, values: Any = None, bins: int = 64, *, counts: Any = None, edges: Any = None,
                 np_histogram: tuple[Any, Any] | None = None) -> None:
        super().__init__()
        if np_histogram is not None:
            counts, edges = np_histogram
        self._values, self._counts, self._edges = values, counts, edges
        self.bins = bins

    def _capture(self) -> Any:
        import numpy as np

        given = self._counts is not None or self._edges is not None
        if given and self._values is not None:
            raise MediaError(f"got values and counts/edges; give one of them; {ACCEPTED['histogram']}")
        if given:
            counts = _to_numpy(self._counts).astype(np.float64).ravel() if self._counts is not None else None
            edges = _to_numpy(self._edges).astype(np.float64).ravel() if self._edges is not None else None
            if counts is None or edges is None or len(edges) != len(counts) + 1 or len(counts) == 0:
                raise MediaError(f"got {0 if counts is None else len(counts)} counts and "
                                 f"{0 if edges is None else len(edges)} edges; {ACCEPTED['histogram']}")
            if not (np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0)):
                raise MediaError(f"the edges are not finite and increasing; {ACCEPTED['histogram']}")
            if not np.all(np.isfinite(counts)) or np.any(counts < 0):
                raise MediaError(f"counts must be finite and >= 0; {ACCEPTED['histogram']}")
            self.meta.update(count=float(counts.sum()), bins=len(counts), nbytes=counts.nbytes + edges.nbytes)
            return ("bins", counts, edges)
        if self._values is None:
            raise MediaError(f"got no values; {ACCEPTED['histogram']}")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 1:
            raise MediaError(f"bins={self.bins!r} is invalid; accepted: an integer >= 1")
        values = _to_numpy(self._values)
        if _kind_of_dtype(values) not in "biuf":
            raise MediaError(f"got dtype {values.dtype}; {ACCEPTED['histogram']}")
        values = values.ravel()
        if values.size == 0:
            raise MediaError(f"got no values (an empty array); {ACCEPTED['histogram']}")
        self.meta.update(count=int(values.size), bins=self.bins, nbytes=int(values.nbytes))
        return ("values", values, None)

    def _drop_inputs(self) -> None:
        self._values = self._counts = self._edges = None

    def describe(self) -> str:
        if self.problem:
            return f"histogram (left out: {self.problem[:60]})"
        return f"histogram of {self.meta.get('count', 0):g} values, {self.meta.get('bins')} bins"

    @property
    def bin_count(self) -> int:
        return int(self.meta.get("bins", 0))

    def finite_values(self, key: str = "") -> Any:
        """The finite values (``None`` for precomputed bins); NaN/inf are left out with one warning."""
        return self._derived("finite", lambda: self._finite(key))

    def _finite(self, key: str) -> Any:
        import numpy as np

        form, values, _ = self.data
        if form != "values":
            return None
        finite = np.isfinite(values)
        bad = int(values.size - np.count_nonzero(finite))
        if bad:
            _warn_once("nan", key, f"histogram {key!r} has {bad:,} NaN or infinite value(s) among {values.size:,}; "
                       "they are left out (a histogram counts finite values)")
            values = values[finite]
        if values.size == 0:
            raise MediaError("it has no finite value (all NaN or infinite); "
                             + ACCEPTED["histogram"])
        return values

    def histogram(self, key: str = "") -> tuple[Any, Any]:
        """``(counts, edges)``: computed once from the values, on the first worker thread that asks."""
        counts, edges = self._derived("histogram", lambda: self._make_histogram(key))
        return counts, edges

    def _make_histogram(self, key: str) -> tuple[Any, Any]:
        import numpy as np

        form, counts, edges = self.data
        if form == "bins":
            return counts, edges
        values = self.finite_values(key)
        low, high = float(values.min()), float(values.max())
        if low == high:
            low, high = low - 0.5, high + 0.5
        counts, edges = np.histogram(values, bins=self.bins, range=(low, high))
        return counts, edges

    def stats(self, key: str = "") -> dict[str, float]:
        """``min``, ``max``, ``num``, ``sum``, ``sum_squares`` (from the values, or the bin centres)."""
        return dict(self._derived("stats", lambda: self._make_stats(key)))

    def _make_stats(self, key: str) -> dict[str, float]:
        import numpy as np

        values = self.finite_values(key)
        if values is not None:
            as64 = values.astype(np.float64)
            return {"min": float(as64.min()), "max": float(as64.max()), "num": float(as64.size),
                    "sum": float(as64.sum()), "sum_squares": float(np.dot(as64, as64))}
        counts, edges = self.histogram(key)
        centres = (edges[:-1] + edges[1:]) / 2
        return {"min": float(edges[0]), "max": float(edges[-1]), "num": float(counts.sum()),
                "sum": float((counts * centres).sum()), "sum_squares": float((counts * centres**2).sum())}

    def to_image(self, key: str = "") -> Image:
        """The histogram drawn as a PNG image (matplotlib when installed, else a plain bar chart)."""
        return self._derived("image", lambda: Image.from_png(_draw_histogram(*self.histogram(key), key), key))


def _draw_histogram(counts: Any, edges: Any, title: str) -> bytes:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure as MplFigure
    except ImportError:
        return _bars_png(counts)
    figure = MplFigure(figsize=(6.4, 3.6), dpi=100)  # no pyplot: safe on a worker thread
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.stairs(counts, edges, fill=True, alpha=0.8)
    axes.set_title(title)
    axes.set_ylabel("count")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _bars_png(counts: Any, width: int = 512, height: int = 256) -> bytes:
    """A bar chart of ``counts`` drawn with NumPy alone (no matplotlib): white ground, blue bars."""
    import numpy as np

    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    counts = np.asarray(counts, dtype=np.float64)
    peak = counts.max() if counts.size and counts.max() > 0 else 1.0
    margin, bins = 8, len(counts)
    span = width - 2 * margin
    for index, count in enumerate(counts):
        left = margin + int(index * span / bins)
        right = max(left + 1, margin + int((index + 1) * span / bins) - (1 if span / bins > 3 else 0))
        top = height - margin - int((height - 2 * margin) * count / peak)
        canvas[top:height - margin, left:right] = (31, 119, 180)
    canvas[height - margin, margin:width - margin] = 0  # the axis
    return encode_png(canvas)


class Table(Media):
    """A table: ``Table(columns=[...], rows=[[...], ...])``, dict rows, or ``Table(dataframe=df)``.
    ``data=`` is accepted for ``rows=`` (W&B's name); a DataFrame may also be passed first."""

    kind = "table"

    def __init__(self, columns: Sequence[Any] | Any = None, rows: Sequence[Any] | None = None, *,
                 data: Sequence[Any] | None = None, dataframe: Any = None) -> None:
        super().__init__()
        if dataframe is None and hasattr(columns, "to_dict") and hasattr(columns, "columns"):
            dataframe, columns = columns, None  # Table(df)
        self._columns, self._rows, self._frame = columns, rows if rows is not None else data, dataframe

    def _capture(self) -> Any:
        columns: list[str] | None
        rows: list[Any] | None
        if self._frame is not None:
            frame = self._frame
            if not (hasattr(frame, "columns") and hasattr(frame, "itertuples")):
                raise MediaError(f"dataframe= got {type(frame).__name__}; {ACCEPTED['table']}")
            columns = [str(c) for c in frame.columns]
            rows = [list(row) for row in frame.itertuples(index=False, name=None)]
        else:
            rows = list(self._rows) if self._rows is not None else None
            if rows is None:
                raise MediaError(f"got no rows; {ACCEPTED['table']}")
            columns = [str(c) for c in self._columns] if self._columns is not None else None
            if rows and all(isinstance(r, Mapping) for r in rows):
                if columns is None:
                    columns = []
                    for row in rows:
                        columns += [str(k) for k in row if str(k) not in columns]
                rows = [[_get(row, c) for c in columns] for row in rows]
            if columns is None:
                columns = [str(i) for i in range(len(rows[0]) if rows and _is_row(rows[0]) else 0)]
            for index, row in enumerate(rows):
                if not _is_row(row):
                    raise MediaError(f"row {index} is {type(row).__name__}, not a list of cells; {ACCEPTED['table']}")
                if len(row) != len(columns):
                    raise MediaError(f"row {index} has {len(row)} cell(s) but the table has {len(columns)} "
                                     f"column(s) {columns[:8]}; {ACCEPTED['table']}")
        cells = [[_cell(value, index, column) for column, value in zip(columns, row)]
                 for index, row in enumerate(rows)]
        images = sum(1 for row in cells for value in row if isinstance(value, Image))
        nbytes = sum(value.nbytes if isinstance(value, Image) else 64 for row in cells for value in row)
        self.meta.update(columns=len(columns), rows=len(cells), images=images, nbytes=nbytes)
        return (columns, cells)

    def _drop_inputs(self) -> None:
        self._columns = self._rows = self._frame = None

    def describe(self) -> str:
        if self.problem:
            return f"table (left out: {self.problem[:60]})"
        return f"table {self.meta.get('rows', 0)}x{self.meta.get('columns', 0)}"

    @property
    def columns(self) -> list[str]:
        return list(self.data[0])

    @property
    def rows(self) -> list[list[Any]]:
        """Rows of cells: numbers, strings, ``None`` or :class:`Image`."""
        return [list(row) for row in self.data[1]]

    def text_rows(self) -> list[list[Any]]:
        """Rows with image cells as ``[image WxH]`` (for CSV, Markdown and trackers without image cells)."""
        return [[f"[image {c.width}x{c.height}]" if isinstance(c, Image) else c for c in row] for row in self.data[1]]

    def csv(self) -> str:
        def make() -> str:
            import csv  # lazy, like pickle, shutil and tempfile below: ``import tracklink`` stays cheap

            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(self.columns)
            writer.writerows(["" if c is None else c for c in row] for row in self.text_rows())
            return buffer.getvalue()

        return str(self._derived("csv", make))

    def markdown(self) -> str:
        def cell(value: Any) -> str:
            return ("" if value is None else str(value)).replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(cell(c) for c in self.columns) + " |",
                 "|" + "|".join(" --- " for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.text_rows()]
        return "\n".join(lines)

    def dataframe(self) -> Any:
        """A pandas DataFrame of :meth:`text_rows` (needs pandas)."""
        import pandas as pd  # third-party, optional: only trackers whose SDK takes DataFrames

        return pd.DataFrame(self.text_rows(), columns=self.columns)


def _is_row(row: Any) -> bool:
    return isinstance(row, (list, tuple)) or (hasattr(row, "__len__") and hasattr(row, "__getitem__")
                                              and not isinstance(row, (str, bytes, Mapping)))


def _get(row: Mapping[Any, Any], column: str) -> Any:
    if column in row:
        return row[column]
    for key, value in row.items():
        if str(key) == column:
            return value
    return None


def _number(value: Any) -> float | int | None:
    """A one-element array, tensor or NumPy scalar as a Python number (``tracklink.values`` has the same rule;
    values imports this module, so the few lines are repeated here)."""
    item = getattr(value, "item", None)
    size = getattr(value, "size", None)
    numel = getattr(value, "numel", None)
    count = numel() if callable(numel) else size if isinstance(size, int) else 1
    if callable(item) and count == 1:
        try:
            result = item()
        except (TypeError, ValueError, RuntimeError):
            return None
        return result if isinstance(result, (int, float)) and not isinstance(result, bool) else None
    return None


def _cell(value: Any, row: int, column: str) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Image):
        frozen = value.freeze()
        if frozen.problem:
            raise MediaError(f"the image in row {row}, column {column!r}: {frozen.problem}")
        return frozen
    if isinstance(value, Media):
        raise MediaError(f"row {row}, column {column!r} holds a {type(value).__name__}; {ACCEPTED['table']}")
    number = _number(value)
    if number is not None:
        return number
    if hasattr(value, "shape") and _shape_of(value):
        raise MediaError(f"row {row}, column {column!r} holds an array of shape {_shape_of(value)}; wrap an image "
                         f"in tracklink.Image; {ACCEPTED['table']}")
    try:
        if isinstance(value, float) and math.isnan(value):
            return None
    except TypeError:
        pass
    return str(value)


class Text(Media):
    """A text value (shown as text where the tracker has text, else a ``.txt`` file)."""

    kind = "text"

    def __init__(self, text: Any) -> None:
        super().__init__()
        self._input = text

    def _capture(self) -> Any:
        if not isinstance(self._input, str):
            raise MediaError(f"got {type(self._input).__name__}; {ACCEPTED['text']} (str(value) makes one)")
        self.meta["nbytes"] = len(self._input)
        return self._input

    def _drop_inputs(self) -> None:
        self._input = None

    @property
    def text(self) -> str:
        return str(self.data)

    def describe(self) -> str:
        return f"text ({self.meta.get('nbytes', 0)} characters)" if not self.problem else "text (left out)"


def _pickle_figure(figure: Any) -> bytes:
    """The figure pickled without its pyplot registration, so the copy a worker thread unpickles is never
    attached to pyplot (or a GUI) there."""
    import copyreg  # lazy, like pickle: only figures need them
    import pickle

    pending = [figure]  # the figure's own reduction is replaced once; later references are pickle's memo

    class FigurePickler(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if not pending or obj is not pending[0]:
                return NotImplemented
            pending.clear()
            state = obj.__getstate__()
            state.pop("_restore_to_pylab", None)
            return (copyreg.__newobj__, (type(obj),), state)  # type: ignore[attr-defined]

    buffer = io.BytesIO()
    FigurePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(figure)
    return buffer.getvalue()


class Figure(Media):
    """A matplotlib figure: pickled at ``log()`` (a millisecond or two; matplotlib is not thread-safe and the
    figure may change right after), drawn as a PNG on the tracker's thread. ``close=True`` closes the
    figure in pyplot once it is copied."""

    kind = "figure"

    def __init__(self, figure: Any, close: bool = False) -> None:
        super().__init__()
        self._input = figure
        self.close = close

    def _capture(self) -> Any:
        figure = self._input
        if not (hasattr(figure, "savefig") and hasattr(figure, "get_axes")):
            raise MediaError(f"got {type(figure).__name__}; {ACCEPTED['figure']}")
        try:
            payload: Any = ("pickle", _pickle_figure(figure))
        except Exception as exc:  # an artist that cannot be pickled: draw it now instead
            logger.debug("tracklink: a figure could not be pickled (%r); drawn at log()", exc)
            image = Image.from_png(_savefig_png(figure))
            payload = ("png", image)
        if self.close:
            try:
                import matplotlib.pyplot as plt

                plt.close(figure)
            except Exception:  # pragma: no cover - closing is a courtesy
                pass
        self.meta["nbytes"] = len(payload[1]) if payload[0] == "pickle" else payload[1].nbytes
        return payload

    def _drop_inputs(self) -> None:
        self._input = None

    def figure(self) -> Any:
        """A copy of the figure (unpickled on the calling thread, not attached to pyplot)."""
        form, data = self.data
        if form != "pickle":
            raise MediaError("the figure could only be kept as an image")
        import pickle  # lazy: only figures need it

        return pickle.loads(data)

    def to_image(self, key: str = "") -> Image:
        def make() -> Image:
            form, data = self.data
            return data if form == "png" else Image.from_png(_savefig_png(self.figure()))

        return self._derived("image", make)

    def describe(self) -> str:
        return "figure" if not self.problem else "figure (left out)"


def _savefig_png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    dpi = min(float(getattr(figure, "dpi", 100) or 100), _FIGURE_DPI_LIMIT)
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


#: Files up to this size are copied at ``log()``; larger ones are hard-linked (a rewrite in place before the
#: upload reaches the trackers then; a replacement or a deletion does not).
_COPY_LIMIT = 64 * 2**20


class _HeldFile:
    """A private link (or copy) of a logged file, removed when the last snapshot holding it is gone."""

    def __init__(self, source: Path, name: str) -> None:
        import shutil
        import tempfile

        self.folder = tempfile.mkdtemp(prefix="tracklink-file-")
        self.path = os.path.join(self.folder, os.path.basename(name) or source.name)
        if source.stat().st_size <= _COPY_LIMIT:
            shutil.copy2(source, self.path)  # the file as it is now
        else:  # a large file is not copied on the training thread: linked (copied across file systems)
            try:
                os.link(source, self.path)
            except OSError:
                shutil.copy2(source, self.path)
        weakref.finalize(self, shutil.rmtree, self.folder, True)


class File(Media):
    """A file to upload as an artifact (``name``: the name it gets, default the file's own). The file is
    copied aside at ``log()`` (a file over 64 MiB is hard-linked instead, which costs nothing: then only a
    rewrite in place before its upload would reach the trackers), so later changes do not."""

    kind = "file"

    def __init__(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        super().__init__()
        self._input: Any = path
        self.name = name

    def _capture(self) -> Any:
        if not isinstance(self._input, (str, os.PathLike)):
            raise MediaError(f"got {type(self._input).__name__}; {ACCEPTED['file']}")
        source = Path(self._input)
        if source.is_dir():
            raise MediaError(f"{str(source)!r} is a directory; {ACCEPTED['file']} (log each file, or a checkpoint "
                             "directory with run.log_checkpoint)")
        if not source.is_file():
            raise MediaError(f"no file at {str(source)!r}; {ACCEPTED['file']}")
        self.name = self.name or source.name
        self.meta.update(size=source.stat().st_size, nbytes=0)
        return _HeldFile(source, self.name)

    def _drop_inputs(self) -> None:
        self._input = None

    @property
    def path(self) -> str:
        """The snapshot's path (valid while the value is being delivered)."""
        return str(self.data.path)

    def describe(self) -> str:
        return f"file {self.name!r} ({self.meta.get('size', 0)} bytes)" if not self.problem else "file (left out)"


Artifact = File


class TempFiles:
    """Temporary files for an SDK that takes paths, removed on exit: ``with TempFiles() as files:
    sdk_call(files.write(image.png(), "samples.png"))``."""

    def __enter__(self) -> TempFiles:
        import tempfile

        self.folder = tempfile.mkdtemp(prefix="tracklink-media-")
        self._count = 0
        return self

    def write(self, data: bytes, name: str) -> str:
        """A new file holding ``data``, named ``name`` (its base name) inside a folder of its own."""
        self._count += 1
        folder = os.path.join(self.folder, str(self._count))
        os.mkdir(folder)
        path = os.path.join(folder, os.path.basename(name) or "media")
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    def __exit__(self, *exc: object) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


# -- routing ------------------------------------------------------------------------------------------------


def outcome(kind: str, support: Iterable[str]) -> str:
    """What a value of ``kind`` becomes at a tracker that supports ``support`` (kinds its ``log_media``
    renders, plus ``"text"`` with ``log_text`` and ``"file"`` with ``log_artifact``): ``"native"``, a
    fallback from :data:`FALLBACKS`, or ``"dropped"``."""
    can = set(support)
    if kind in can:
        return "native"
    if kind in ("histogram", "figure"):
        return "image" if "image" in can else ("image as PNG file" if "file" in can else "dropped")
    if kind == "image":
        return "PNG file" if "file" in can else "dropped"
    if kind == "table":
        return "CSV file" if "file" in can else ("Markdown text" if "text" in can else "dropped")
    if kind == "text":
        return "text file" if "file" in can else "dropped"
    return "dropped"


def safe_name(key: str) -> str:
    """A relative path from a logged key (``eval/samples`` stays nested; ``..`` and odd characters go)."""
    parts = []
    for part in key.replace("\\", "/").split("/"):
        cleaned = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in part).strip(".")
        if cleaned:
            parts.append(cleaned)
    return "/".join(parts) or "media"
