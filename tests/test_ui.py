"""The live window, driven offscreen with synthetic results (ticks are called directly, no sleeping)."""

from __future__ import annotations

import os
import queue

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PyQt5.QtWidgets")
pytest.importorskip("pyqtgraph")

from PyQt5.QtCore import QLibraryInfo, QPoint, Qt  # noqa: E402
from PyQt5.QtGui import QImage  # noqa: E402
from PyQt5.QtTest import QTest  # noqa: E402

from rtdiar.config import UIConfig  # noqa: E402
from rtdiar.drawing import track_colour_rgb  # noqa: E402
from rtdiar.types import FaceResult, FrameResult  # noqa: E402
from rtdiar.ui import MAX_RESULTS_PER_TICK, LiveWindow, _use_pyqt_plugins, ensure_application  # noqa: E402

WIDTH_PX, HEIGHT_PX = 320, 240
LEFT_BOX = (30.0, 50.0, 130.0, 190.0)  # face 1
RIGHT_BOX = (190.0, 50.0, 290.0, 190.0)  # face 2
STATS = {"capture_fps": 25.0, "processing_fps": 24.8, "latency_ms": 120.4, "dropped": 3, "mic_overflows": 0}


@pytest.fixture(scope="module")
def qapp():
    return ensure_application()


def synthetic_results(n_frames: int = 50, fps: float = 25.0, extra_face_frames: int = 0) -> list[FrameResult]:
    """Two faces with drifting scores; face 2 speaks in the first half, face 1 in the second.

    `extra_face_frames` adds a face 3 to the first frames only (a track that goes away).
    """
    image = np.full((HEIGHT_PX, WIDTH_PX, 3), 90, np.uint8)
    results = []
    for i in range(n_frames):
        speaker = 2 if i < n_frames // 2 else 1
        faces = [
            FaceResult(1, LEFT_BOX, score=0.2 + 0.01 * i, speaking=speaker == 1),
            FaceResult(2, RIGHT_BOX, score=0.8 - 0.01 * i, speaking=speaker == 2),
        ]
        if i < extra_face_frames:
            faces.append(FaceResult(3, (140.0, 20.0, 180.0, 60.0), score=0.1))
        results.append(FrameResult(frame=i, t=i / fps, faces=faces, speaker=speaker,
                                   latency_ms=100.0, image=image.copy()))
    return results


class Harness:
    """A shown window over a queue, counting on_close calls and serving changeable stats."""

    def __init__(self, cfg: UIConfig) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.stats = dict(STATS)
        self.closes = 0
        self.window = LiveWindow(self.queue, lambda: self.stats, self._on_close, cfg, "test", threshold=0.5)
        self.window.show()
        ensure_application().processEvents()

    def _on_close(self) -> None:
        self.closes += 1

    def feed(self, results: list[FrameResult | None]) -> None:
        for result in results:
            self.queue.put(result)
        while not self.queue.empty() and self.window.isVisible():
            self.window.tick()


@pytest.fixture
def harness(qapp):
    made = Harness(UIConfig(plot_history_s=10.0, refresh_ms=15))
    yield made
    made.window.close()


def grab_rgb(widget) -> np.ndarray:
    image = widget.grab().toImage().convertToFormat(QImage.Format_RGB888)
    bits = image.constBits()
    bits.setsize(image.byteCount())
    rows = np.frombuffer(bits, np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, : image.width() * 3].reshape(image.height(), image.width(), 3).copy()


def test_window_shows_newest_frame_scores_and_status(harness):
    results = synthetic_results()
    harness.feed(results)
    window = harness.window

    pixmap = window.picture.pixmap()
    assert pixmap is not None and not pixmap.isNull()
    assert pixmap.width() / pixmap.height() == pytest.approx(WIDTH_PX / HEIGHT_PX, abs=0.02)
    assert pixmap.width() <= window.picture.width() and pixmap.height() <= window.picture.height()
    window.resize(500, 900)  # a narrow window: the picture follows the label's new width
    ensure_application().processEvents()
    assert window.picture.pixmap().width() == window.picture.width()
    assert window.picture.pixmap().height() == pytest.approx(window.picture.width() * HEIGHT_PX / WIDTH_PX, abs=1)

    # the green highlight is drawn, on the left face (face 1 speaks in the newest frame)
    shot = grab_rgb(window)
    origin = window.picture.mapTo(window, QPoint(0, 0))
    picture = shot[origin.y(): origin.y() + window.picture.height(), origin.x(): origin.x() + window.picture.width()]
    red, green, blue = (picture[..., c].astype(int) for c in range(3))
    green_mask = (green > 150) & (green > red + 80) & (green > blue + 80)
    assert green_mask.sum() > 50
    assert np.nonzero(green_mask)[1].mean() < picture.shape[1] / 2

    items = window.plot.getPlotItem().listDataItems()
    assert len(items) == 2
    t = np.array([r.t for r in results])
    for track_id in (1, 2):
        x, y = window.curves[track_id].getData()
        fed = [f.score for r in results for f in r.faces if f.id == track_id]
        assert x[-1] == 0.0
        np.testing.assert_allclose(x, t - t[-1])
        np.testing.assert_allclose(y, fed)
        assert window.curves[track_id].opts["pen"].color().getRgb()[:3] == track_colour_rgb(track_id)

    status = window.status.text()
    for part in ("capture 25.0 fps", "processing 24.8 fps", "latency 120 ms", "dropped 3", "speaker face 1"):
        assert part in status


def test_status_tolerates_missing_stats(harness):
    harness.stats = {}
    harness.feed(synthetic_results(n_frames=4))
    assert harness.window.status.text() == "speaker face 1"


def test_tracks_gone_longer_than_history_lose_their_curve(qapp):
    made = Harness(UIConfig(plot_history_s=1.0, refresh_ms=15))
    made.feed(synthetic_results(n_frames=50, extra_face_frames=10))  # face 3 last seen at 0.36 s of 1.96 s
    assert sorted(made.window.curves) == [1, 2]
    assert len(made.window.plot.getPlotItem().listDataItems()) == 2
    x, _ = made.window.curves[1].getData()
    assert x.min() >= -1.0 and x[-1] == 0.0
    made.window.close()


def test_none_closes_the_window_and_calls_on_close_once(harness):
    harness.feed(synthetic_results(n_frames=5) + [None])
    assert not harness.window.isVisible()
    assert harness.closes == 1
    harness.window.close()
    assert harness.closes == 1


@pytest.mark.parametrize("key", [Qt.Key_Q, Qt.Key_Escape])
def test_quit_keys_close_and_call_on_close_once(harness, key):
    QTest.keyClick(harness.window, Qt.Key_A)
    assert harness.window.isVisible() and harness.closes == 0
    QTest.keyClick(harness.window, key)
    assert not harness.window.isVisible()
    assert harness.closes == 1


def test_tick_on_empty_queue_changes_nothing(harness):
    harness.feed(synthetic_results(n_frames=10))
    status = harness.window.status.text()
    x_before, y_before = harness.window.curves[1].getData()
    harness.stats = {**STATS, "dropped": 99}
    harness.window.tick()
    assert harness.window.status.text() == status
    x_after, y_after = harness.window.curves[1].getData()
    np.testing.assert_array_equal(x_after, x_before)
    np.testing.assert_array_equal(y_after, y_before)
    assert harness.window.isVisible() and harness.closes == 0


def test_one_tick_does_bounded_work(harness):
    for result in synthetic_results(n_frames=MAX_RESULTS_PER_TICK + 7):
        harness.queue.put(result)
    harness.window.tick()
    assert harness.queue.qsize() == 7


def test_opencv_plugin_folder_is_replaced_but_a_users_is_kept(monkeypatch):
    pyqt_plugins = QLibraryInfo.location(QLibraryInfo.PluginsPath)
    monkeypatch.setenv("QT_QPA_PLATFORM_PLUGIN_PATH", "/venv/site-packages/cv2/qt/plugins")
    _use_pyqt_plugins()
    assert os.environ["QT_QPA_PLATFORM_PLUGIN_PATH"] == pyqt_plugins
    monkeypatch.delenv("QT_QPA_PLATFORM_PLUGIN_PATH")
    _use_pyqt_plugins()
    assert os.environ["QT_QPA_PLATFORM_PLUGIN_PATH"] == pyqt_plugins
    monkeypatch.setenv("QT_QPA_PLATFORM_PLUGIN_PATH", "/opt/my-qt/plugins")
    _use_pyqt_plugins()
    assert os.environ["QT_QPA_PLATFORM_PLUGIN_PATH"] == "/opt/my-qt/plugins"
