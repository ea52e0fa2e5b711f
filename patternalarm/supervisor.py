"""Run long-lived processes in their own process groups, each under a small watchdog.

`Supervisor.start` launches the watchdog (`python -m patternalarm.supervisor`, this module) as
the leader of a new process group; the watchdog runs the service as its child in that group and
keeps the state file up to date: its own pid and start time, the service's, the restarts and the
last exit. Start times are compared, so a reused pid is never mistaken for the service. Stopping
signals the watchdog, which passes the signal on to the service and does not restart it; then
the whole group is stopped, so children (gunicorn workers, Spark JVMs, postgres backends) never
linger, even when the service or the watchdog already died.

Restarts follow systemd's `Restart=on-failure`, for specs with `restart=True`: an exit with a
non-zero status or by a signal restarts the service after 1 s, then 2 s, 4 s ... up to the
longest delay (30 s); a run that lasted longer than that starts the delays again from 1 s. A clean
exit (status 0) or a stop is final. A service is restarted only once `wait_healthy` saw it
healthy: one that fails during start-up fails `up` at once with its log, instead of retrying a
bad configuration forever.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# How long start() waits for a new watchdog to report its service, or for an exiting one to go.
_SETTLE_S = 30.0


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
    # A restart by the watchdog does not run it again.
    prepare: Callable[[], None] | None = None
    url: str = ""
    # Restart after an unexpected exit (see the module docstring); first and longest delay.
    restart: bool = False
    backoff_s: tuple[float, float] = (1.0, 30.0)


@dataclass
class Status:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    rss_mb: float
    url: str
    restarts: int = 0
    last_exit: str | None = None


class Supervisor:
    def __init__(self, var_dir: Path):
        self.run_dir = var_dir / "run"
        self.log_dir = var_dir / "log"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _state_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def _healthy_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.healthy"

    def _read_state(self, name: str) -> dict | None:
        try:
            return json.loads(self._state_path(name).read_text())
        except FileNotFoundError:
            return None

    def _watchdog(self, name: str) -> psutil.Process | None:
        state = self._read_state(name)
        return live(state["pid"], state["create_time"]) if state else None

    def process(self, name: str) -> psutil.Process | None:
        """The live service process of `name` (the watchdog's child), or None: stopped, or
        waiting to be restarted. Never a stranger with a reused pid."""
        state = self._read_state(name)
        if not state or not state.get("child_pid"):
            return None
        return live(state["child_pid"], state["child_create_time"])

    def _supervised(self, name: str) -> bool:
        """Whether a watchdog runs `name` or is about to restart it.

        A watchdog that has yet to notice its child's death, or that is on its way out, is
        waited for: its next state decides.
        """
        deadline = time.monotonic() + _SETTLE_S
        while True:
            state = self._read_state(name)
            watchdog = live(state["pid"], state["create_time"]) if state else None
            if watchdog is None:
                return False
            phase = state.get("phase")
            if phase == "backoff" or (phase == "running" and self.process(name)):
                return True
            if time.monotonic() > deadline:
                raise ServiceError(f"the watchdog of {name} (pid {watchdog.pid}) is stuck in "
                                   f"phase {phase!r}; `patternalarm down` stops it")
            time.sleep(0.05)

    def start(self, spec: ProcessSpec) -> bool:
        """Start `spec` unless it runs (or its watchdog restarts it); True when started."""
        if self._supervised(spec.name):
            return False
        crashed = self._read_state(spec.name) is not None
        self._kill_group(spec.name, signal.SIGKILL)  # leftovers of a crashed service or watchdog
        self._state_path(spec.name).unlink(missing_ok=True)
        self._healthy_path(spec.name).unlink(missing_ok=True)
        for port, setting in spec.ports.items():
            # A killed multi-threaded process shows as a zombie while its other threads still
            # hold its sockets: give a crashed service's ports a moment to close.
            ensure_port_free(port, setting, wait_s=5.0 if crashed else 0.0)
        if spec.prepare:
            spec.prepare()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "patternalarm.supervisor", "--run-dir", str(self.run_dir),
                "--name", spec.name]
        if spec.user:
            argv += ["--user", spec.user]
        if spec.restart:
            argv += ["--restart", "--backoff", *map(str, spec.backoff_s)]
        with open(self.log_path(spec.name), "ab") as log:
            watchdog = subprocess.Popen(
                [*argv, "--", *spec.argv],
                env={**os.environ, **spec.env},
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Callers ask for the service's pid right after start(): wait for the watchdog's report.
        deadline = time.monotonic() + _SETTLE_S
        while True:
            state = self._read_state(spec.name)
            if state and state["pid"] == watchdog.pid and state.get("phase") != "starting":
                return True
            if watchdog.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"the watchdog of {spec.name} did not start; last lines of "
                                   f"{self.log_path(spec.name)}:\n{self.tail(spec.name)}")
            time.sleep(0.02)

    def wait_healthy(self, spec: ProcessSpec, timeout_s: float) -> None:
        """Wait until the service answers its health check; from then on it is restarted."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process(spec.name):
                if spec.healthy():
                    self._healthy_path(spec.name).touch()
                    return
            elif self._watchdog(spec.name) is None:
                raise ServiceError(
                    f"{spec.name} exited during start-up; last lines of "
                    f"{self.log_path(spec.name)}:\n{self.tail(spec.name)}"
                )
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{spec.name} not healthy after {timeout_s:.0f}s; last lines of "
                    f"{self.log_path(spec.name)}:\n{self.tail(spec.name)}"
                )
            time.sleep(0.25)

    def stop(self, spec: ProcessSpec, timeout_s: float = 20.0) -> bool:
        """Stop the whole process group; returns True if something was running."""
        had = self._group_members(spec.name)
        # The watchdog passes the graceful signal to the service alone, which knows how to shut
        # its children down (postgres fast shutdown on SIGINT, gunicorn draining its workers),
        # and exits without a restart once it has gone.
        leader = self._watchdog(spec.name) or self.process(spec.name)
        if leader:
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
        self._healthy_path(spec.name).unlink(missing_ok=True)
        return bool(had)

    def status(self, spec: ProcessSpec) -> Status:
        proc = self.process(spec.name)
        state = self._read_state(spec.name) or {}
        rss = 0
        for member in self._group_members(spec.name):
            with contextlib.suppress(psutil.NoSuchProcess):
                rss += member.memory_info().rss
        return Status(
            name=spec.name,
            running=proc is not None,
            healthy=proc is not None and spec.healthy(),
            pid=proc.pid if proc else None,
            rss_mb=rss / 2**20,
            url=spec.url,
            restarts=state.get("restarts", 0),
            last_exit=state.get("last_exit"),
        )

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path(name).read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def names(self) -> list[str]:
        """Every name with a state file: the services and the jobs the CLI started."""
        return sorted(path.stem for path in self.run_dir.glob("*.json"))

    def _group_members(self, name: str) -> list[psutil.Process]:
        state = self._read_state(name)
        return _group(state["pid"], state["create_time"]) if state else []

    def _kill_group(self, name: str, sig: int) -> None:
        _kill_and_wait(self._group_members(name), sig)


def live(pid: int, create_time: float) -> psutil.Process | None:
    """Process `pid` if it is the one started at `create_time` (not a reused pid) and alive."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 1 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.NoSuchProcess:
        return None


def _group(pgid: int, since: float) -> list[psutil.Process]:
    """Live processes of group `pgid` started after its leader (not a recycled group id).

    Zombies are left out: they have exited and only wait for their parent to reap them, so
    there is nothing to signal, and psutil refuses to read their command line.
    """
    members = []
    for proc in psutil.process_iter():
        try:
            if (os.getpgid(proc.pid) == pgid and proc.create_time() >= since - 1
                    and proc.status() != psutil.STATUS_ZOMBIE):
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def stop_tree(proc: psutil.Process, timeout_s: float = 10.0) -> None:
    """Stop a process that is not a group leader of its own (a command run in someone's
    terminal or script shares their group) with its descendants: SIGTERM, then SIGKILL."""
    members = [proc, *proc.children(recursive=True)]
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.terminate()
    _, alive = psutil.wait_procs(members, timeout=timeout_s)
    _kill_and_wait(alive, signal.SIGKILL)


def _kill_and_wait(procs: list[psutil.Process], sig: int) -> None:
    members = [p for p in procs if _alive(p)]
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


# --- the watchdog process ------------------------------------------------------------------

def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


class _Watchdog:
    """Runs one service as its child and restarts it per the policy in the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state_path = Path(args.run_dir) / f"{args.name}.json"
        self.healthy_path = Path(args.run_dir) / f"{args.name}.healthy"
        self.me = psutil.Process()
        self.child: subprocess.Popen | None = None
        self.stopping: int | None = None
        self.state = {"pid": self.me.pid, "create_time": self.me.create_time(),
                      "phase": "starting", "child_pid": None, "child_create_time": None,
                      "restarts": 0, "last_exit": None, "last_exit_at": None}

    def _on_stop(self, signum: int, _frame: object) -> None:
        self.stopping = signum
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        if self.child is not None and self.child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, signum)

    def _write(self, **changes: object) -> None:
        self.state.update(changes)
        # Readers poll this file: replace it whole, never let them see half of it.
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        tmp.replace(self.state_path)

    def _say(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} [supervisor] {self.args.name}: {message}", flush=True)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        first, longest = self.args.backoff
        delay = first
        while True:
            started = time.monotonic()
            try:
                self.child = subprocess.Popen(self.args.argv, stdin=subprocess.DEVNULL,
                                              user=self.args.user)
            except OSError as exc:
                self._say(f"cannot start {self.args.argv[0]}: {exc}")
                self._write(phase="exited", child_pid=None, last_exit=f"cannot start: {exc}",
                            last_exit_at=time.time())
                return 127
            if self.stopping:  # the stop signal came while the child was being created
                self._forward(self.stopping)
            with contextlib.suppress(psutil.NoSuchProcess):
                self._write(phase="running", child_pid=self.child.pid,
                            child_create_time=psutil.Process(self.child.pid).create_time())
            returncode = self.child.wait()
            ran_s = time.monotonic() - started
            failed = returncode != 0 and not self.stopping
            self.state.update(last_exit=_describe(returncode), last_exit_at=time.time())
            if not self.stopping:
                # What the service left in its group are orphans (postgres backends still
                # holding its shared memory, Spark's Python workers): a restart needs them gone.
                _kill_and_wait([p for p in _group(self.me.pid, self.state["create_time"])
                                if p.pid != self.me.pid], signal.SIGKILL)
            if not (failed and self.args.restart and self.healthy_path.exists()):
                if failed:
                    self._say(f"{_describe(returncode)} after {ran_s:.1f}s; not restarted")
                self._write(phase="exited", child_pid=None)
                return 0 if self.stopping else (returncode if returncode >= 0
                                                 else 128 - returncode)
            if ran_s > longest:
                delay = first
            self._say(f"{_describe(returncode)} after {ran_s:.1f}s; "
                      f"restart {self.state['restarts'] + 1} in {delay:g}s")
            self._write(phase="backoff", child_pid=None)
            deadline = time.monotonic() + delay
            # Short sleeps: a stop during the delay must end the watchdog at once.
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.stopping:
                self._write(phase="exited")
                return 0
            self._write(restarts=self.state["restarts"] + 1)
            delay = min(delay * 2, longest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m patternalarm.supervisor",
        description="Watchdog of one service (started by Supervisor.start; see the docstring).")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--user")
    parser.add_argument("--restart", action="store_true")
    parser.add_argument("--backoff", nargs=2, type=float, default=(1.0, 30.0),
                        metavar=("FIRST_S", "LONGEST_S"))
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.argv[:1] == ["--"]:
        args.argv = args.argv[1:]
    if not args.argv:
        parser.error("the service's command line is missing (after --)")
    return _Watchdog(args).run()


if __name__ == "__main__":
    sys.exit(main())
