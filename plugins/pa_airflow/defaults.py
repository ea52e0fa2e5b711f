"""What every PatternAlarm DAG shares: ownership, retries, timeouts."""

from __future__ import annotations

from datetime import datetime, timedelta

from patternalarm.settings import DOMAINS

START = datetime(2024, 1, 1)
DEFAULT_ARGS = {
    "owner": "patternalarm",
    "retries": 1,
    "retry_delay": timedelta(seconds=30),
    "execution_timeout": timedelta(minutes=30),
}
DOMAIN_LIST = list(DOMAINS)
