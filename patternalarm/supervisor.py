"""Run long-lived processes in their own process groups, with state and logs in the var dir.

A process's state file records its pid and start time, so a reused pid is not mistaken for
it; stopping signals the whole process group, so children (gunicorn workers, Spark JVMs,
postgres backends) never linger, even when the leader already died.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil


class ServiceError(RuntimeError):
    pass


class PortInUse(ServiceError):
    pass


@dataclass
class ProcessSpec:
    name: str
    argv: list[str]
    # Port -> the setting that chooses it, so a clash names what to change.
    ports: dict[int, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    healthy: Callable[[], bool] = lambda: True
    # Runs before a cold start only (init a data dir, migrate a schema); must be idempotent.
    prepare: Callable[[], None] | None = None
    url: str = ""


@dataclass
class Status:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    rss_mb: float
    url: str


class Supervisor:
    def __init__(self, var_dir: Path):
        self.run_dir = var_dir / "run"
        self.log_dir = var_dir / "log"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _state_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def _read_state(self, name: str) -> dict | None:
        try:
            return json.loads(self._state_path(name).read_text())
        except FileNotFoundError:
            return None

    def process(self, name: str) -> psutil.Process | None:
        """The live leader process of `name`, or None (never a stranger with a reused pid)."""
        state = self._read_state(name)
        if not state:
            return None
        try:
            proc = psutil.Process(state["pid"])
            if abs(proc.create_time() - state["create_time"]) > 1 or proc.status() == "zombie":
                return None
            return proc
        except psutil.NoSuchProcess:
            return None

    def start(self, spec: ProcessSpec) -> bool:
        """Start `spec` unless it already runs; returns True when a process was started."""
        if self.process(spec.name):
            return False
        crashed = self._read_state(spec.name) is not None
        self._kill_group(spec.name, signal.SIGKILL)  # leftovers of a crashed leader
        for port, setting in spec.ports.items():
            # A killed multi-threaded process shows as a zombie while its other threads still
            # hold its sockets: give a crashed service's ports a moment to close.
            ensure_port_free(port, setting, wait_s=5.0 if crashed else 0.0)
        if spec.prepare:
            spec.prepare()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(spec.name), "ab") as log:
            proc = subprocess.Popen(
                spec.argv,
                env={**os.environ, **spec.env},
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=spec.user,
            )
        state = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
                 "argv": spec.argv}
        self._state_path(spec.name).write_text(json.dumps(state))
        return True

    def wait_healthy(self, spec: ProcessSpec, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.process(spec.name):
                raise ServiceError(
                    f"{spec.name} exited during start-up; last lines of "
                    f"{self.log_path(spec.name)}:\n{self.tail(spec.name)}"
                )
            if spec.healthy():
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{spec.name} not healthy after {timeout_s:.0f}s; last lines of "
                    f"{self.log_path(spec.name)}:\n{self.tail(spec.name)}"
                )
            time.sleep(0.25)

    def stop(self, spec: ProcessSpec, timeout_s: float = 20.0) -> bool:
        """Stop the whole process group; returns True if something was running."""
        had = self._group_members(spec.name)
        leader = self.process(spec.name)
        if leader:
            # The leader alone gets the graceful signal: it knows how to shut its children down
            # (postgres fast shutdown on SIGINT, gunicorn draining its workers).
            leader.send_signal(spec.stop_signal)
            psutil.wait_procs([leader], timeout=timeout_s)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            rest = [p for p in had if _alive(p)]
            if not rest:
                break
            for member in rest:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.send_signal(sig)
            psutil.wait_procs(rest, timeout=5)
        self._state_path(spec.name).unlink(missing_ok=True)
        return bool(had)

    def status(self, spec: ProcessSpec) -> Status:
        proc = self.process(spec.name)
        members = self._group_members(spec.name)
        rss = 0
        for member in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                rss += member.memory_info().rss
        return Status(
            name=spec.name,
            running=proc is not None,
            healthy=proc is not None and spec.healthy(),
            pid=proc.pid if proc else None,
            rss_mb=rss / 2**20,
            url=spec.url,
        )

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path(name).read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _group_members(self, name: str) -> list[psutil.Process]:
        state = self._read_state(name)
        if not state:
            return []
        pgid = state["pid"]
        members = []
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) == pgid and proc.create_time() >= state["create_time"] - 1:
                    members.append(proc)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        return members

    def _kill_group(self, name: str, sig: int) -> None:
        members = [p for p in self._group_members(name) if _alive(p)]
        for member in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(sig)
        # Signals are asynchronous: wait, so that freed ports are free when we return.
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in members) and time.monotonic() < deadline:
            time.sleep(0.05)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ensure_port_free(port: int, setting: str, host: str = "127.0.0.1",
                     wait_s: float = 0.0) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                return
            except OSError:
                if time.monotonic() >= deadline:
                    raise PortInUse(
                        f"port {port} is already in use by another process: set {setting} to a "
                        f"free port (e.g. in .env) or stop what uses it "
                        f"(`ss -ltnp 'sport = :{port}'` shows it)") from None
        time.sleep(0.05)


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
