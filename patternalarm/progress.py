"""What long commands show while they run: the demo's stages and every generator's progress.

A stage is one line with its elapsed time; on a terminal the line ticks while the stage runs,
elsewhere (CI logs, pipes) only the finished line is printed. Generators (`patternalarm
generate`, a replay, the demo's traffic) each keep a small JSON file under `var/run/generate/`,
so `status` can show their rate and progress and `down` can find and stop them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import psutil

from patternalarm.supervisor import live

_SPINNER = "|/-\\"


class StageFailed(RuntimeError):
    """A stage that failed; its message already says why and where the log is."""


class Stage:
    def __init__(self) -> None:
        self.detail = ""
        self.failed = False
        self.epilogue = ""

    def note(self, detail: str) -> None:
        """What the stage is doing now (shown on the ticking line and in the final one)."""
        self.detail = detail

    def fail(self, detail: str, epilogue: str = "") -> None:
        """Mark the stage failed without stopping the command; `epilogue` follows its line."""
        self.detail, self.failed, self.epilogue = detail, True, epilogue


class Stages:
    def __init__(self, out: TextIO | None = None, width: int = 14) -> None:
        self.out = out or sys.stdout
        self.width = width
        self.live = self.out.isatty()

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    @contextlib.contextmanager
    def stage(self, title: str) -> Iterator[Stage]:
        stage = Stage()
        started = time.monotonic()
        done = threading.Event()

        def line(mark: str) -> str:
            return (f"  {mark} {title:<{self.width}} {time.monotonic() - started:6.1f}s  "
                    f"{stage.detail}")

        def tick() -> None:
            turn = 0
            while not done.wait(0.25):
                turn += 1
                self.out.write("\r\033[K" + line(_SPINNER[turn % len(_SPINNER)]))
                self.out.flush()

        ticker = threading.Thread(target=tick, daemon=True) if self.live else None
        if ticker:
            ticker.start()
        try:
            yield stage
        except BaseException:
            self._finish(done, ticker, line("✗"))
            raise
        self._finish(done, ticker, line("✗" if stage.failed else "✓"))
        if stage.epilogue:
            self.say(stage.epilogue)

    def _finish(self, done: threading.Event, ticker: threading.Thread | None,
                text: str) -> None:
        done.set()
        if ticker:
            ticker.join()
            self.out.write("\r\033[K")
        self.say(text.rstrip())


# --- generators ----------------------------------------------------------------------------

def generator_dir(var_dir: Path) -> Path:
    return var_dir / "run" / "generate"


class GeneratorReport:
    """The progress file of this generator process, rewritten at most once a second."""

    def __init__(self, var_dir: Path, plan: Any) -> None:
        me = psutil.Process()
        self.path = generator_dir(var_dir) / f"{me.pid}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _forget_finished(self.path.parent)
        self.state: dict[str, Any] = {
            "pid": me.pid, "create_time": me.create_time(), "state": "running",
            "mode": plan.mode, "domains": list(plan.domains),
            "target_rate_per_min": plan.per_min * len(plan.domains),
            "target": None, "sent": 0, "errors": 0, "episodes": 0, "elapsed_s": 0.0,
            "rate_per_min": 0.0, "updated_at": time.time()}
        self._written = 0.0
        self._write()

    def progress(self, update: dict[str, Any]) -> None:
        """A generator progress callback (see patternalarm.generator.execute)."""
        stats = update["stats"].values()
        elapsed = update["elapsed_s"]
        sent = sum(s.get("sent", 0) for s in stats)
        self.state.update(
            target=sum(update["targets"].values()), sent=sent,
            errors=sum(s.get("errors", 0) for s in stats), episodes=update["episodes"],
            elapsed_s=elapsed, rate_per_min=sent / elapsed * 60 if elapsed > 0 else 0.0)
        if time.monotonic() - self._written >= 1.0:
            self._write()

    def finish(self, state: str) -> None:
        self.state["state"] = state
        self._write()

    def _write(self) -> None:
        self._written = time.monotonic()
        self.state["updated_at"] = time.time()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        tmp.replace(self.path)


def combine(*callbacks: Callable[[dict[str, Any]], None] | None):
    """One progress callback calling every given one."""
    chosen = [c for c in callbacks if c is not None]

    def call(update: dict[str, Any]) -> None:
        for callback in chosen:
            callback(update)
    return call


def generators(var_dir: Path) -> list[tuple[dict[str, Any], psutil.Process | None]]:
    """Each known generator's last report and its process (None once it has gone)."""
    found = []
    for path in sorted(generator_dir(var_dir).glob("*.json"), key=os.path.getmtime):
        state = _read(path)
        if state is None:
            continue
        proc = live(state["pid"], state["create_time"])
        if proc is None and state["state"] == "running":
            state["state"] = "killed"  # it never wrote its end
        found.append((state, proc))
    return found


def _forget_finished(directory: Path) -> None:
    """Reports of generators that have gone, but the newest: status shows how the last ended."""
    ended = [(state, path) for path in directory.glob("*.json")
             for state in [_read(path)]
             if state is not None and live(state["pid"], state["create_time"]) is None]
    ended.sort(key=lambda item: item[0]["updated_at"])
    for _, path in ended[:-1]:
        path.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
