"""The live Qt window: the annotated camera picture, a scrolling plot of every face's score, a status line.

A thin consumer of the engine's `FrameResult` queue: it never blocks the processing thread and
draws only the newest frame per refresh, so a slow display cannot slow the diarizer down.
This module imports PyQt5 at the top, so import it only where a window is actually wanted.
"""

from __future__ import annotations

import os
import queue
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PyQt5.QtCore import QLibraryInfo, Qt, QTimer
from PyQt5.QtGui import QCloseEvent, QImage, QKeyEvent, QPixmap, QResizeEvent
from PyQt5.QtWidgets import QApplication, QLabel, QMainWindow, QSizePolicy, QVBoxLayout, QWidget

from rtdiar.config import UIConfig
from rtdiar.drawing import annotate, track_colour_rgb
from rtdiar.types import FrameResult

# At 25 fps and a refresh of a few ms a tick normally finds one result; the cap keeps a tick short
# after a stall (the rest waits for the next tick) so the window stays responsive.
MAX_RESULTS_PER_TICK = 100


def _use_pyqt_plugins() -> None:
    """Point Qt at PyQt5's own platform plugins unless the user chose a folder.

    opencv's non-headless wheels set QT_QPA_PLATFORM_PLUGIN_PATH to their bundled plugins when
    `cv2` is imported (overwriting any value); those plugins are built against opencv's private
    Qt and abort PyQt5 with "Could not load the Qt platform plugin xcb". A value pointing into
    opencv's folder is therefore not the user's and is replaced.
    """
    current = os.environ.get("QT_QPA_PLATFORM_PLUGIN_PATH")
    if current and Path(current).parts[-3:] != ("cv2", "qt", "plugins"):
        return
    os.environ["QT_QPA_PLATFORM_PLUGIN_PATH"] = QLibraryInfo.location(QLibraryInfo.PluginsPath)


def ensure_application() -> QApplication:
    """The running QApplication, or a new one (with the plugin fix) if there is none yet."""
    app = QApplication.instance()
    if app is None:
        _use_pyqt_plugins()
        app = QApplication(sys.argv)
    return app


def _to_pixmap(image_bgr: np.ndarray) -> QPixmap:
    """A QPixmap holding its own copy of a BGR uint8 image."""
    image = np.ascontiguousarray(image_bgr)
    height, width = image.shape[:2]
    qimage = QImage(image.data, width, height, image.strides[0], QImage.Format_BGR888)
    return QPixmap.fromImage(qimage.copy())


def format_status(stats: dict, speaker: int | None) -> str:
    """`capture 25.0 fps · processing 24.8 fps · latency 120 ms · dropped 0 · speaker face 2`.

    A figure the engine does not report (e.g. no microphone) is left out rather than faked.
    """
    parts = []
    if stats.get("capture_fps") is not None:
        parts.append(f"capture {stats['capture_fps']:.1f} fps")
    if stats.get("processing_fps") is not None:
        parts.append(f"processing {stats['processing_fps']:.1f} fps")
    if stats.get("latency_ms") is not None:
        parts.append(f"latency {stats['latency_ms']:.0f} ms")
    if stats.get("dropped") is not None:
        parts.append(f"dropped {stats['dropped']}")
    if stats.get("mic_overflows"):
        parts.append(f"mic overflows {stats['mic_overflows']}")
    parts.append("speaker none" if speaker is None else f"speaker face {speaker}")
    return " · ".join(parts)


class LiveWindow(QMainWindow):
    """Shows results as they come from `results`; `None` on the queue means the stream ended."""

    def __init__(
        self,
        results: queue.Queue[FrameResult | None],
        stats: Callable[[], dict],
        on_close: Callable[[], None],
        cfg: UIConfig,
        title: str,
        threshold: float | None = None,
    ) -> None:
        super().__init__()
        self._results = results
        self._stats = stats
        self._on_close: Callable[[], None] | None = on_close
        self._history_s = cfg.plot_history_s
        self._frame_pixmap: QPixmap | None = None
        self._scores: dict[int, deque[tuple[float, float]]] = {}  # id -> (t, smoothed score)
        self._last_seen_t: dict[int, float] = {}
        self.curves: dict[int, pg.PlotDataItem] = {}

        self.setWindowTitle(title)
        self.picture = QLabel(alignment=Qt.AlignCenter)
        # Ignored: the label takes the room the layout gives it instead of growing to the pixmap.
        self.picture.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Ignored)
        self.plot = self._make_plot(threshold)
        self.status = QLabel()
        self.statusBar().addWidget(self.status)

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.addWidget(self.picture, stretch=2)
        layout.addWidget(self.plot, stretch=1)
        self.setCentralWidget(central)
        self.resize(960, 900)

        self._timer = QTimer(self)
        self._timer.timeout.connect(self.tick)
        self._timer.start(cfg.refresh_ms)

    def _make_plot(self, threshold: float | None) -> pg.PlotWidget:
        plot = pg.PlotWidget()
        plot.setLabel("bottom", "time relative to now (s)")
        plot.setLabel("left", "smoothed score")
        for side in ("bottom", "left"):
            plot.getAxis(side).enableAutoSIPrefix(False)  # else scores show as "700 (x0.001)"
        plot.setXRange(-self._history_s, 0.0, padding=0.02)
        plot.enableAutoRange(x=False, y=True)
        plot.showGrid(x=True, y=True, alpha=0.3)
        plot.addLegend(offset=(10, 10))
        if threshold is not None:
            pen = pg.mkPen((200, 200, 200), width=1, style=Qt.DashLine)
            plot.addItem(pg.InfiniteLine(pos=threshold, angle=0, pen=pen))
        return plot

    def tick(self) -> None:
        """Drain the queue without blocking; every result feeds the plot, only the newest is drawn."""
        newest: FrameResult | None = None
        for _ in range(MAX_RESULTS_PER_TICK):
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                break
            if result is None:
                self.close()
                return
            self._record(result)
            newest = result
        if newest is None:
            return
        if newest.image is not None:
            self._frame_pixmap = _to_pixmap(annotate(newest.image, newest))
            self._show_frame()
        self._update_plot(newest.t)
        self.status.setText(format_status(self._stats(), newest.speaker))

    def _record(self, result: FrameResult) -> None:
        for face in result.faces:
            self._last_seen_t[face.id] = result.t
            if face.score is not None:
                self._scores.setdefault(face.id, deque()).append((result.t, face.score))

    def _update_plot(self, now_t: float) -> None:
        """Curves relative to `now_t`; points older than the history and tracks gone that long go."""
        oldest_t = now_t - self._history_s
        for track_id, last_t in list(self._last_seen_t.items()):
            if last_t < oldest_t:
                del self._last_seen_t[track_id]
                self._scores.pop(track_id, None)
                curve = self.curves.pop(track_id, None)
                if curve is not None:
                    self.plot.removeItem(curve)
        for track_id, points in self._scores.items():
            while points and points[0][0] < oldest_t:
                points.popleft()
            t, score = np.array(points, dtype=float).reshape(-1, 2).T
            self._curve(track_id).setData(t - now_t, score)

    def _curve(self, track_id: int) -> pg.PlotDataItem:
        if track_id not in self.curves:
            pen = pg.mkPen(track_colour_rgb(track_id), width=2)
            self.curves[track_id] = self.plot.plot(pen=pen, name=f"face {track_id}")
        return self.curves[track_id]

    def _show_frame(self) -> None:
        if self._frame_pixmap is not None:
            self.picture.setPixmap(self._frame_pixmap.scaled(
                self.picture.size(), Qt.KeepAspectRatio, Qt.SmoothTransformation))

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._show_frame()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 (Qt's name)
        if event.key() in (Qt.Key_Q, Qt.Key_Escape):
            self.close()
        else:
            super().keyPressEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt's name)
        """Stop refreshing and tell the engine once, however the window was closed."""
        self._timer.stop()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()
        event.accept()


def run_window(
    results: queue.Queue[FrameResult | None],
    stats: Callable[[], dict],
    on_close: Callable[[], None],
    cfg: UIConfig,
    title: str,
    threshold: float | None = None,
) -> int:
    """Show a LiveWindow and run the Qt event loop until it closes; returns the loop's exit code."""
    app = ensure_application()
    window = LiveWindow(results, stats, on_close, cfg, title, threshold)
    window.show()
    return app.exec_()
