"""Process management on real (tiny) processes: start, idempotence, crash recovery, group kill."""

import os
import signal
import sys

import psutil
import pytest

from patternalarm.supervisor import (
    PortInUse,
    ProcessSpec,
    ServiceError,
    Supervisor,
    ensure_port_free,
)
from tests.conftest import wait_until

# A leader that forks a child into its own process group, like gunicorn or postgres do.
LEADER_WITH_CHILD = (
    "import subprocess, sys, time;"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
    "time.sleep(600)"
)


def spec(name="svc", code=LEADER_WITH_CHILD, **kw):
    return ProcessSpec(name=name, argv=[sys.executable, "-c", code], **kw)


def group_of(sup, name):
    return sup._group_members(name)


@pytest.fixture
def sup(tmp_path):
    supervisor = Supervisor(tmp_path)
    yield supervisor
    for state in (tmp_path / "run").glob("*.json"):
        supervisor.stop(spec(state.stem))


def test_start_is_idempotent(sup):
    s = spec()
    assert sup.start(s) is True
    first = sup.process("svc").pid
    assert sup.start(s) is False
    assert sup.process("svc").pid == first


def test_stop_kills_the_whole_group(sup):
    s = spec()
    sup.start(s)
    wait_until(lambda: len(group_of(sup, "svc")) == 2)
    members = group_of(sup, "svc")
    assert sup.stop(s) is True
    assert not any(m.is_running() and m.status() != psutil.STATUS_ZOMBIE for m in members)
    assert sup.process("svc") is None


def test_crashed_leader_is_restarted_and_its_orphans_removed(sup):
    s = spec()
    sup.start(s)
    wait_until(lambda: len(group_of(sup, "svc")) == 2)
    leader = sup.process("svc")
    orphan = next(m for m in group_of(sup, "svc") if m.pid != leader.pid)
    os.kill(leader.pid, signal.SIGKILL)
    wait_until(lambda: sup.process("svc") is None)
    assert sup.start(s) is True
    assert sup.process("svc").pid != leader.pid
    wait_until(lambda: not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE)


def test_down_after_crash_leaves_no_stray_process(sup):
    s = spec()
    sup.start(s)
    wait_until(lambda: len(group_of(sup, "svc")) == 2)
    members = group_of(sup, "svc")
    os.kill(sup.process("svc").pid, signal.SIGKILL)
    sup.stop(s)
    assert not any(m.is_running() and m.status() != psutil.STATUS_ZOMBIE for m in members)


def test_stale_pid_is_not_mistaken_for_the_service(sup, tmp_path):
    (tmp_path / "run").mkdir()
    # Our own pid with a wrong start time: a recycled pid must not count as running.
    (tmp_path / "run" / "svc.json").write_text(
        f'{{"pid": {os.getpid()}, "create_time": 1.0, "argv": []}}')
    assert sup.process("svc") is None


def test_wait_healthy_reports_the_log_of_a_process_that_died(sup):
    s = spec(code="import sys; print('boom: bad config'); sys.exit(3)",
             healthy=lambda: False)
    sup.start(s)
    with pytest.raises(ServiceError, match="boom: bad config"):
        sup.wait_healthy(s, timeout_s=10)


def test_port_in_use_names_the_setting():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port}.*PATTERNALARM_BROKER_PORT"):
            ensure_port_free(port, "PATTERNALARM_BROKER_PORT")


def test_start_refuses_a_taken_port(sup):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse):
            sup.start(spec(ports={port: "PATTERNALARM_MLFLOW_PORT"}))
    assert sup.process("svc") is None
