"""One real daemon, with a real ``odal serve``, on a hostile data dir: special files, device links, loops, links
leading out, bombs, truncated and sparse files at start and while it runs.  It stays up, its memory stays small,
good annotations are ingested and good images scored; each bad line is set aside naming its file and line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from daemon_harness import DaemonProcess, append_records, make_workspace, odal_cli, records_for
from hostile import jpeg, make
from test_recipe import brightness_model, serve

from odal.daemon.sources import datasets
from odal.daemon.store.queue_query import QueueQuery

HOSTILE = ("fifo", "dev_zero_link", "dev_node", "loop", "self_loop", "escaping_link", "dangling_link", "bomb",
           "big_png", "truncated_jpeg", "random_bytes", "folder", "empty", "sparse_huge")
BAD_LINES = {"bomb.png": "too large (a decompression bomb", "big_png.png": "too large (10000x9000 > 50000000",
             "fifo.png": "is a FIFO", "dev_zero_link.png": "outside data_dir", "sparse_huge.png": "too large (",
             "truncated_jpeg.png": "image is complete but cannot be decoded"}


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def _status(workspace: Path) -> dict:
    out = odal_cli("status", "--workspace", str(workspace), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _server_pid(address: str) -> int | None:
    port = address.rsplit(":", 1)[1]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"serve" in cmdline and f"--port={port}".encode() in cmdline:
                return int(entry)
    return None


def test_a_hostile_data_dir_never_stops_the_daemon_and_good_images_still_flow(tmp_path, capsys):
    items = datasets.generate_shapes(tmp_path / "data", 4, seed=21)
    data = tmp_path / "data"
    free = {make(data, f"free-{n}.jpg", "good", seed=n).name for n in range(3)}  # not annotated: to be scored
    (tmp_path / "outside").mkdir()
    for kind in HOSTILE:
        make(data, f"{kind}.png", kind, outside=tmp_path / "outside")
    os.utime(data / "truncated_jpeg.png", (time.time() - 60, time.time() - 60))
    with serve(tmp_path / "serve", {"odal": brightness_model(tmp_path / "bright")}) as address:
        config = make_workspace(tmp_path / "ws", items, min_new=1000, serving_address=address)
        config.write_text(config.read_text() + "\n[limits]\nimage_settle_seconds = 1.0\n")
        export = config.parent / "exports" / "annotations.jsonl"
        bad = [dict(datasets.prodigy_record(items[0], name), _input_hash=1000 + n, spans=[])
               for n, name in enumerate(BAD_LINES)]
        append_records(export, records_for(items[:2]) + bad + records_for(items[2:]))
        time.sleep(1.2)  # the truncated file has settled (its ctime is now)
        with DaemonProcess(config) as daemon:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _status(config.parent)["annotations"]["accepted"] < 4:
                time.sleep(0.3)
            # While it runs: a loop, a FIFO, a device link, a bomb, and a line whose image is cut short.
            os.symlink(data / "l2.png", data / "l1.png")
            os.symlink(data / "l1.png", data / "l2.png")
            make(data, "late-fifo.jpg", "fifo")
            make(data, "late-zero.png", "dev_zero_link")
            make(data, "late-bomb.png", "bomb")
            good = jpeg((96, 80))
            (data / "late-cut.jpg").write_bytes(good[: len(good) // 2])
            append_records(export, [dict(datasets.prodigy_record(items[1], "late-cut.jpg"), _input_hash=2000,
                                         spans=[])])
            queue = QueueQuery.reader(config.parent / "work")
            try:
                scored = set()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and scored != free:
                    scored = {Path(r["path"]).name for r in queue.next_images(50) if r["uncertainty"] is not None}
                    time.sleep(0.5)
            finally:
                queue.close()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                status = _status(config.parent)
                late = [s for s in status["set_aside"] if "late-cut.jpg" in s["error"]]
                if late and late[0]["error"].startswith("image is complete"):
                    break
                time.sleep(0.5)
            assert daemon.alive(), (config.parent / "daemon.stderr").read_text()[-3000:]
            assert scored == free  # every good unannotated image was scored, nothing else
            assert status["annotations"]["accepted"] == 4 and status["annotations"]["invalid"] == len(BAD_LINES) + 1
            by_line = {s["line"]: s["error"] for s in status["set_aside"] if s["source"] == str(export)}
            for line, (name, message) in enumerate(BAD_LINES.items(), start=3):
                assert name in by_line[line] and message in by_line[line], (line, by_line)
            assert late and late[0]["error"].startswith("image is complete but cannot be decoded"), late
            shown = odal_cli("status", "--workspace", str(config.parent)).stdout
            assert any("late-cut.jpg" in line and line.endswith("[replace the image to try again]")
                       for line in shown.splitlines()), shown
            assert "[waiting for the image]" not in shown
            daemon_mb, server_pid = _peak_rss_mb(daemon.pid), _server_pid(address)
            server_mb = _peak_rss_mb(server_pid) if server_pid else float("nan")
            assert daemon.terminate() == 0
    with capsys.disabled():
        print(f"\npeak RSS through the hostile data dir: daemon {daemon_mb:.0f} MiB, odal serve {server_mb:.0f} MiB")
    assert daemon_mb < 400
