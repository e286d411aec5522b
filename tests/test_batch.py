"""`rtdiar batch`: every recording of an archive gets its folder of outputs and a row of the summary;
a broken one is one line there and the rest go on; a second run only does what is left."""

from __future__ import annotations

import csv
import json
import shutil
import threading
import time

import pytest

from conftest import DEV_WILD
from rtdiar.cli import main


def _summary(out) -> dict[str, dict]:
    with (out / "summary.csv").open() as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def test_an_archive_is_processed_in_parallel_and_resumed(tmp_path, capsys):
    (tmp_path / "broken.mp4").write_text("not a video")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{DEV_WILD / 'pcavs_00067.mp4'}\n# a comment\n\nbroken.mp4\n")
    folder = tmp_path / "more"
    folder.mkdir()
    shutil.copy(DEV_WILD / "lrw_sample1.mp4", folder / "pcavs_00067.mp4")  # another recording with the same stem
    out = tmp_path / "out"

    assert main(["batch", str(listed), str(folder), "--out", str(out), "--workers", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("rtdiar: judging with") and err[-1].startswith("rtdiar batch: 1 of 3 recordings failed")
    rows = _summary(out)
    assert len(rows) == 3
    broken = rows[str(tmp_path / "broken.mp4")]
    assert broken["status"].startswith("failed: ") and "\n" not in broken["status"]
    done = [row for row in rows.values() if row["status"] == "ok"]
    assert len(done) == 2 and all(int(row["faces"]) == 1 and int(row["speakers"]) == 1 for row in done)
    assert float(rows[str(DEV_WILD / "pcavs_00067.mp4")]["duration_s"]) > 4 > float(rows[str(folder / "pcavs_00067.mp4")]["duration_s"])
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders[0] == "broken" and all(name.startswith("pcavs_00067-") for name in folders[1:])  # two, apart
    rttm_ids = {line.split()[1] for line in (out / "all.rttm").read_text().splitlines()}
    assert rttm_ids == set(folders) - {"broken"}
    for name in set(folders) - {"broken"}:
        frames = [json.loads(line) for line in (out / name / f"{name}.jsonl").read_text().splitlines()]
        assert frames and (out / name / f"{name}.rttm").exists()

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("outcome.json")}
    assert main(["batch", str(listed), str(folder), "--out", str(out)]) == 1  # nothing left but the failure
    assert {p: p.stat().st_mtime_ns for p in out.rglob("outcome.json")} == stamps
    assert main(["batch", str(listed), str(folder), "--out", str(out), "--retry-failed"]) == 1
    changed = [p.parent.name for p in out.rglob("outcome.json") if p.stat().st_mtime_ns != stamps[p]]
    assert changed == ["broken"]
    assert not list(out.glob(".*"))  # no half-written folder or table left behind


def test_bad_inputs_are_one_line(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rtdiar: error: no such file or folder: {tmp_path / 'missing.mp4'}"
    assert main(["batch", str(tmp_path), "--out", str(tmp_path / "out"), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_on_ray_each_recording_is_a_task_and_a_dead_worker_is_retried(tmp_path):
    """A local Ray with 2 CPUs; one worker is killed while it runs a recording: the task runs again
    and every recording ends in the same folder layout."""
    pytest.importorskip("ray")
    import psutil

    clips = [DEV_WILD / "pcavs_00067.mp4", DEV_WILD / "lrw_sample1.mp4"]
    killed: list[int] = []

    def kill_a_running_task() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not killed:
            for proc in psutil.process_iter(["cmdline"]):
                if any("ray::ray_task" in part for part in proc.info["cmdline"] or []):
                    time.sleep(1.0)  # well into the recording
                    proc.kill()
                    killed.append(proc.pid)
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_a_running_task)
    killer.start()
    out = tmp_path / "out"
    assert main(["batch", *map(str, clips), "--out", str(out), "--ray", "--workers", "2"]) == 0
    killer.join()
    assert killed
    rows = _summary(out)
    assert sorted(rows) == sorted(map(str, clips)) and all(row["status"] == "ok" for row in rows.values())
    for clip in clips:
        assert (out / clip.stem / f"{clip.stem}.jsonl").read_text().count("\n") > 20
