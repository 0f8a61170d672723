"""tracklink's default log handler and progress bars.

Bad behaviour caught: a message logged while a tqdm bar is drawn (a checkpoint deleted by rotation, a tracker
warning from its worker thread) written straight to the stream, so it lands on the end of the bar's line.
"""

from __future__ import annotations

import io
import logging
import threading

from tqdm import tqdm

from tracklink.log import ProgressAwareHandler


def _logger(stream: io.StringIO) -> logging.Logger:
    logger = logging.getLogger(f"tracklink.test-log-{id(stream)}")
    logger.handlers[:] = [ProgressAwareHandler(stream)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_without_a_bar_it_is_a_stream_handler() -> None:
    stream = io.StringIO()
    _logger(stream).info("tracklink: hello %s", "there")
    assert stream.getvalue() == "tracklink: hello there\n"


def test_with_a_bar_open_a_message_gets_its_own_line() -> None:
    stream = io.StringIO()
    logger = _logger(stream)
    bar = tqdm(total=10, file=stream, ncols=80, mininterval=0)
    try:
        bar.update(3)
        logger.info("tracklink: deleting older checkpoint %s", "checkpoint-50")
        done = threading.Event()
        threading.Thread(target=lambda: (logger.warning("tracklink: from a worker"), done.set())).start()
        assert done.wait(10)
        bar.update(2)
    finally:
        bar.close()
    lines = stream.getvalue().replace("\r", "\n").split("\n")
    assert "tracklink: deleting older checkpoint checkpoint-50" in lines
    assert "tracklink: from a worker" in lines
    for line in lines:  # no line holds both a bar and a message
        assert not ("|" in line and "tracklink:" in line), line
