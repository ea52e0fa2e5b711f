"""Secrets generated on first start and kept in the var directory (mode 0600).

Nothing here has a default that would work anywhere else: every value is random per install.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
from pathlib import Path

from patternalarm.settings import Settings

_GENERATORS = {
    "postgres_password": lambda: secrets.token_urlsafe(24),
    "airflow_admin_password": lambda: secrets.token_urlsafe(12),
    "airflow_fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    "airflow_secret_key": lambda: secrets.token_urlsafe(32),
    "api_key": lambda: secrets.token_urlsafe(24),
}


def path(settings: Settings) -> Path:
    return settings.var_dir / "secrets.json"


def load(settings: Settings) -> dict[str, str]:
    """Read the secrets, generating any that are missing."""
    file = path(settings)
    values = json.loads(file.read_text()) if file.exists() else {}
    missing = {k: gen() for k, gen in _GENERATORS.items() if k not in values}
    if missing:
        values.update(missing)
        file.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file with O_EXCL and mode 0600: no moment where another user
        # could open it; the rename then replaces the old file whole.
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".secrets-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(values, out, indent=2)
            os.replace(tmp, file)
        except BaseException:
            os.unlink(tmp)
            raise
    return values
