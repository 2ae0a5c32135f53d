"""sd_notify: real datagram sockets standing in for systemd's notify socket."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import pytest

from odal.common.sdnotify import Notifier, watchdog_interval


@pytest.fixture
def path_socket(tmp_path):
    """A datagram socket bound to a path in a tmp dir, as systemd's NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


@pytest.fixture
def abstract_socket():
    """A datagram socket bound to a Linux abstract name; NOTIFY_SOCKET spells it '@name'."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"odal-test-{uuid.uuid4().hex}"
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    yield sock, "@" + name
    sock.close()


def received(sock) -> bytes:
    return sock.recv(4096)


def test_each_method_sends_its_exact_datagram_to_a_path_socket(path_socket):
    """ready/status/watchdog/stopping each send one datagram with exactly their KEY=value line."""
    sock, address = path_socket
    with Notifier({"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert received(sock) == b"READY=1"
        assert notifier.status("round 3: training")
        assert received(sock) == b"STATUS=round 3: training"
        assert notifier.watchdog()
        assert received(sock) == b"WATCHDOG=1"
        assert notifier.stopping()
        assert received(sock) == b"STOPPING=1"


def test_abstract_socket_name_is_reached(abstract_socket):
    """'@name' in NOTIFY_SOCKET addresses the abstract socket of that name."""
    sock, address = abstract_socket
    with Notifier({"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.ready()
        assert received(sock) == b"READY=1"


def test_reloading_sends_reloading_and_the_current_monotonic_time(path_socket):
    """reloading() sends RELOADING=1 and MONOTONIC_USEC on CLOCK_MONOTONIC, in one datagram."""
    sock, address = path_socket
    before = time.monotonic_ns() // 1000
    with Notifier({"NOTIFY_SOCKET": address}) as notifier:
        notifier.reloading()
    after = time.monotonic_ns() // 1000
    first, second = received(sock).split(b"\n")
    assert first == b"RELOADING=1"
    key, value = second.split(b"=")
    assert key == b"MONOTONIC_USEC" and before <= int(value) <= after


def test_send_joins_fields_in_order_in_one_datagram(path_socket):
    """send(**fields) puts every field, in the order given, in one newline-separated datagram."""
    sock, address = path_socket
    with Notifier({"NOTIFY_SOCKET": address}) as notifier:
        notifier.send(READY=1, STATUS="serving version 2", MAINPID=os.getpid())
    assert received(sock) == f"READY=1\nSTATUS=serving version 2\nMAINPID={os.getpid()}".encode()


def test_status_folds_newlines_so_the_message_stays_one_field(path_socket):
    """A multi-line status becomes one line, so it cannot inject other fields."""
    sock, address = path_socket
    with Notifier({"NOTIFY_SOCKET": address}) as notifier:
        notifier.status("failed\nREADY=1")
    assert received(sock) == b"STATUS=failed READY=1"


def test_malformed_fields_are_refused():
    """A lower-case key or a value with a newline is a programming error, even outside systemd."""
    notifier = Notifier({})
    with pytest.raises(ValueError):
        notifier.send(ready=1)
    with pytest.raises(ValueError):
        notifier.send(STATUS="a\nb")


def test_without_notify_socket_everything_is_a_no_op():
    """With NOTIFY_SOCKET unset nothing is sent and nothing fails."""
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    notifier.close()


def test_send_failure_is_logged_once_and_never_raises(tmp_path, caplog):
    """A socket that is gone makes sends return False and log one warning, however many are tried."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.WARNING, logger="odal.common.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False
    notifier.close()
    assert len([r for r in caplog.records if "sd_notify" in r.getMessage()]) == 1


def test_a_relative_notify_socket_is_logged_and_ignored(caplog):
    """NOTIFY_SOCKET that is neither an absolute path nor @abstract disables notification with a warning."""
    with caplog.at_level(logging.WARNING, logger="odal.common.sdnotify"):
        notifier = Notifier({"NOTIFY_SOCKET": "relative/path"})
    assert not notifier.enabled and notifier.ready() is False
    assert "NOTIFY_SOCKET" in caplog.text


def test_unset_environment_removes_notify_socket_for_children(path_socket, monkeypatch):
    """unset_environment=True keeps notifying but stops child processes inheriting NOTIFY_SOCKET."""
    sock, address = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with Notifier(unset_environment=True) as notifier:
        assert "NOTIFY_SOCKET" not in os.environ
        notifier.ready()
    assert received(sock) == b"READY=1"


def test_watchdog_interval_is_half_the_period():
    """WATCHDOG_USEC=60s gives a 30 s ping interval."""
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0


def test_watchdog_interval_checks_the_pid():
    """WATCHDOG_PID naming another process means the watchdog is not ours."""
    usec = {"WATCHDOG_USEC": "10000000"}
    assert watchdog_interval({**usec, "WATCHDOG_PID": str(os.getpid())}) == 5.0
    assert watchdog_interval({**usec, "WATCHDOG_PID": str(os.getpid() + 1)}) is None


@pytest.mark.parametrize("env", [{}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"}, {"WATCHDOG_USEC": "-5"}])
def test_watchdog_interval_is_none_without_a_valid_period(env):
    """No, zero, negative or unparsable WATCHDOG_USEC means no watchdog."""
    assert watchdog_interval(env) is None


def test_the_real_daemon_speaks_the_protocol_as_systemd_runs_it(tmp_path, path_socket):
    """READY once the watchers run, STATUS, WATCHDOG at half of WATCHDOG_USEC, RELOADING+READY on SIGHUP,
    STOPPING on SIGTERM, exit 0: what a Type=notify unit with WatchdogSec= expects of odal-daemon."""
    import signal as signals
    import time

    from daemon_harness import DaemonProcess, append_records, make_workspace
    from odal.daemon.sources import datasets

    sock, address = path_socket
    sock.settimeout(0.2)
    items = datasets.generate_shapes(tmp_path / "images", 2)
    config = make_workspace(tmp_path / "ws", items, min_new=1000)
    append_records(config.parent / "exports" / "annotations.jsonl",
                   [datasets.prodigy_record(i, i.image.name) for i in items])
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}).start()
    messages: list[str] = []

    def until(done, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                assert daemon.alive(), (config.parent / "daemon.stderr").read_text()[-2000:]
        assert done(), messages

    try:
        until(lambda: "READY=1" in messages)
        assert daemon.wait_event("daemon_started", 5) is not None
        until(lambda: "STATUS=reading annotation sources" in messages, 5)  # READY came first: no start timeout
        assert messages.index("READY=1") < messages.index("STATUS=reading annotation sources")
        start, watched_until = len(messages), time.monotonic() + 2.2
        until(lambda: "STATUS=idle" in messages and time.monotonic() >= watched_until, 10)
        pings = [m for m in messages[start:] if m == "WATCHDOG=1"]
        assert 3 <= len(pings) <= 8, messages  # every 0.5 s, plus at most a few from reading
        daemon.proc.send_signal(signals.SIGHUP)
        until(lambda: messages.count("READY=1") == 2)  # again, after RELOADING
        reload = next(m for m in messages if m.startswith("RELOADING=1"))
        assert "MONOTONIC_USEC=" in reload and messages.index(reload) < len(messages) - 1
        assert daemon.terminate() == 0
        until(lambda: "STOPPING=1" in messages, 5)
    finally:
        daemon.stop()


def test_a_long_first_read_keeps_pinging_the_watchdog(tmp_path, path_socket):
    """A big export read at start (8000 lines, seconds of work before the loop runs) must not let WatchdogSec=
    expire: pings keep coming at half the period while the lines are read, not only once the loop turns."""
    import json

    from daemon_harness import DaemonProcess, append_records, make_workspace
    from odal.daemon.sources import datasets

    sock, address = path_socket
    sock.settimeout(0.2)
    items = datasets.generate_shapes(tmp_path / "images", 2)
    config = make_workspace(tmp_path / "ws", items, min_new=1_000_000)
    records = []
    for n in range(8000):
        record = datasets.prodigy_record(items[n % 2], items[n % 2].image.name)
        record.update(_input_hash=10_000 + n, _task_hash=20_000 + n)
        records.append(json.dumps(record))
    append_records(config.parent / "exports" / "annotations.jsonl", records)
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}).start()
    timed: list[tuple[float, str]] = []
    try:
        deadline = time.monotonic() + 120
        while "STATUS=idle" not in [m for _, m in timed] and time.monotonic() < deadline:
            try:
                timed.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                assert daemon.alive(), (config.parent / "daemon.stderr").read_text()[-2000:]
        messages = [m for _, m in timed]
        assert "STATUS=idle" in messages, messages
        begin = next(t for t, m in timed if m == "STATUS=reading annotation sources")
        end = next(t for t, m in timed if m == "STATUS=idle")
        assert end - begin > 1.0, "the read was shorter than the watchdog period: the test proves nothing"
        pings = [begin] + [t for t, m in timed if m == "WATCHDOG=1" and begin <= t <= end] + [end]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert max(gaps) < 1.0, (round(end - begin, 2), [round(g, 2) for g in gaps])
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
