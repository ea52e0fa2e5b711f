"""Process management on real (tiny) processes: start, idempotence, crash recovery, group kill."""

import os
import signal
import subprocess
import sys

import psutil
import pytest

from patternalarm.supervisor import (
    PortInUse,
    ProcessSpec,
    ServiceError,
    Supervisor,
    ensure_port_free,
    stop_tree,
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


# A service that records each start, then runs until the file `go` exists and exits with CODE.
def flaky(tmp_path, code):
    return (f"import pathlib, sys, time\n"
            f"d = pathlib.Path({str(tmp_path)!r})\n"
            f"with open(d / 'starts', 'a') as f: f.write(f'{{time.time()}}\\n')\n"
            f"while not (d / 'go').exists(): time.sleep(0.01)\n"
            f"sys.exit({code})\n")


def starts(tmp_path):
    path = tmp_path / "starts"
    return [float(t) for t in path.read_text().split()] if path.exists() else []


def test_failing_service_is_restarted_with_growing_delays(sup, tmp_path):
    s = spec(code=flaky(tmp_path, 1), restart=True, backoff_s=(0.2, 1.6))
    sup.start(s)
    sup.wait_healthy(s, timeout_s=10)
    (tmp_path / "go").touch()
    wait_until(lambda: len(starts(tmp_path)) >= 5, timeout_s=20)
    (tmp_path / "go").unlink()  # the next run stays up
    times = starts(tmp_path)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8 and gaps[3] >= 1.6
    assert gaps[1] > gaps[0] and gaps[2] > gaps[1] and gaps[3] > gaps[2]
    # The run that saw `go` last may still be replaced by one more: wait for the one that stays.
    wait_until(lambda: sup.process("svc") is not None
               and sup.status(s).restarts == len(starts(tmp_path)) - 1, timeout_s=10)
    status = sup.status(s)
    assert status.running and status.restarts >= 4
    assert status.last_exit == "exit status 1"
    assert "restart 1 in 0.2s" in sup.tail("svc")


def test_killed_service_is_restarted_after_its_orphans_are_removed(sup):
    s = spec(restart=True, backoff_s=(0.1, 1.0))
    sup.start(s)
    sup.wait_healthy(s, timeout_s=10)
    wait_until(lambda: len(group_of(sup, "svc")) == 3)  # watchdog, service, its child
    service = sup.process("svc")
    orphan = next(p for p in service.children())
    os.kill(service.pid, signal.SIGKILL)
    wait_until(lambda: sup.process("svc") is not None and sup.process("svc").pid != service.pid)
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
    assert sup.status(s).restarts == 1
    assert sup.status(s).last_exit == "killed by SIGKILL"
    assert sup.start(s) is False  # `up` leaves a supervised service alone


def test_clean_exit_is_not_restarted(sup, tmp_path):
    s = spec(code=flaky(tmp_path, 0), restart=True, backoff_s=(0.1, 1.0))
    sup.start(s)
    sup.wait_healthy(s, timeout_s=10)
    (tmp_path / "go").touch()
    wait_until(lambda: sup._watchdog("svc") is None)
    assert sup.process("svc") is None
    assert len(starts(tmp_path)) == 1
    assert sup.status(s).restarts == 0 and sup.status(s).last_exit == "exit status 0"


def test_stop_is_not_a_failure_and_leaves_nothing(sup):
    # The service dies of the stop signal (non-zero), which must not count as a crash.
    s = spec(restart=True, backoff_s=(0.1, 1.0))
    sup.start(s)
    sup.wait_healthy(s, timeout_s=10)
    wait_until(lambda: len(group_of(sup, "svc")) == 3)
    members = group_of(sup, "svc")
    assert sup.stop(s) is True
    assert not any(m.is_running() and m.status() != psutil.STATUS_ZOMBIE for m in members)
    assert sup.process("svc") is None and sup._read_state("svc") is None


def test_failure_during_start_up_is_reported_not_retried(sup, tmp_path):
    s = spec(code=flaky(tmp_path, 3).replace("while not", "if False and not"),
             restart=True, backoff_s=(0.1, 1.0), healthy=lambda: False)
    sup.start(s)
    with pytest.raises(ServiceError, match="exited during start-up"):
        sup.wait_healthy(s, timeout_s=10)
    assert sup._watchdog("svc") is None
    assert len(starts(tmp_path)) == 1


def test_stop_tree_stops_a_command_and_its_orphaned_children():
    # Like `patternalarm generate` run from a script: in the caller's process group.
    proc = subprocess.Popen([sys.executable, "-c", LEADER_WITH_CHILD])
    leader = psutil.Process(proc.pid)
    wait_until(lambda: len(leader.children()) == 1)
    child = leader.children()[0]
    stop_tree(leader)
    assert proc.wait(timeout=5) is not None
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
