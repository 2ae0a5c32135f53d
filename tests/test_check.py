"""``odal check``: each mistake that used to show only after a round (or never) is one PROBLEM line with its fix,
and exit 1; a right workspace served by a real ``odal serve`` passes, devices asked of a real TensorFlow child."""

from __future__ import annotations

import io
import re
from pathlib import Path

from daemon_harness import make_workspace
from odal.daemon.commands import check
from odal.daemon.commands.install_service import TEMPLATE_DIR, UNIT_NAME
from odal.daemon.store.history import History
from odal.daemon.store.ledger import Ledger
from odal.serving.process import free_port
from serving_fixtures import small_model_base, small_server  # noqa: F401 - fixtures, by name


def _run(config: Path, **options) -> tuple[int, str]:
    out = io.StringIO()
    code = check.run(config, out=out, **options)
    return code, out.getvalue()


def _problems(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.startswith("PROBLEM"):
            assert "; fix: " in line, line
            found[line.removeprefix("PROBLEM").strip().split(":")[0]] = line
    return found


def test_mistakes_are_one_problem_line_each_with_the_fix_and_exit_1(tmp_path):
    """A mistyped export folder, a server nobody runs, paths the installed unit hides or keeps read-only, a label
    map the daemon would refuse."""
    (tmp_path / "ws" / "images").mkdir(parents=True)
    config = make_workspace(tmp_path / "ws", [], serving_address=f"127.0.0.1:{free_port()}")
    text = config.read_text().replace('export_dir = "exports"', 'export_dir = "exprots"')
    config.write_text(re.sub(r'base_path = .*', 'base_path = "/dev/shm/odal-check-models/odal"', text))
    unit = tmp_path / UNIT_NAME
    unit.write_text((TEMPLATE_DIR / UNIT_NAME).read_text())  # PrivateTmp=yes, ReadWritePaths=/var/lib/odal
    code, text = _run(config, unit=unit, with_devices=False, timeout=2)
    problems = _problems(text)
    assert code == 1 and set(problems) == {"prodigy.export_dir", "serving", "service"}, text
    assert "exprots does not exist" in problems["prodigy.export_dir"]
    assert "no answer from 127.0.0.1" in problems["serving"] and "odal serve --port" in problems["serving"]
    service = [line for line in text.splitlines() if line.startswith("PROBLEM  service")]
    assert any("paths.data_dir" in line and "PrivateTmp=yes" in line for line in service), service
    assert any("model.base_path /dev/shm/odal-check-models/odal is read-only for the service" in line
               and "add /dev/shm/odal-check-models/odal to ReadWritePaths=" in line for line in service), service

    (config.parent / "label_map.pbtxt").write_text("item { id: 2 name: 'square' }")
    code, text = _run(config, unit=tmp_path / "none", with_devices=False, timeout=2)
    assert code == 1 and "label map" in _problems(text), text


def test_a_right_workspace_passes_and_a_server_missing_the_live_version_is_a_problem(tmp_path, small_server,
                                                                                    small_model_base):
    (tmp_path / "ws" / "images").mkdir(parents=True)
    config = make_workspace(tmp_path / "ws", [], serving_address=small_server.address, base_path=small_model_base)
    config.write_text(config.read_text().replace('name = "odal"', 'name = "m"'))
    (config.parent / "work").mkdir()
    Ledger(config.parent / "work" / "ledger.sqlite").close()  # as the daemon's first start leaves it
    history = History(config.parent / "work" / "ledger.sqlite")
    history.record_version(1, None, small_model_base / "1", {"mAP": 0.5}, "confirmed")
    code, text = _run(config, unit=tmp_path / "no-unit")
    assert code == 0 and "everything looks right" in text, text
    assert re.search(r"ok       serving: 127\.0\.0\.1:\d+ serves 'm' version\(s\) \[1\]", text), text
    assert re.search(r"ok       devices: CPU:0", text), text

    history.record_version(2, None, small_model_base / "2", {"mAP": 0.6}, "published")  # the server never saw it
    history.close()
    code, text = _run(config, unit=tmp_path / "no-unit", with_devices=False)
    assert code == 1 and "not version 2, the newest published" in _problems(text)["serving"], text
