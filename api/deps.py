"""What routes depend on, injected per request: the app's resources and the API-key check."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader

from api.database import Database
from api.scoring import ModelProvider
from api.telemetry import Telemetry
from patternalarm.settings import Settings

API_KEY_HEADER = "X-API-Key"


@dataclass
class Resources:
    settings: Settings
    api_key: str
    database: Database
    models: ModelProvider
    telemetry: Telemetry
    # Scoring's own worker threads, apart from the pool that runs the database routes: requests
    # waiting for a connection never hold up /predict. Scoring is CPU work, a few threads will do.
    scoring: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(4))


def resources(request: Request) -> Resources:
    return request.app.state.resources


# auto_error=False: a missing key gets the same 401 as a wrong one (FastAPI would say 403).
_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                           description="the `api_key` in <var_dir>/secrets.json")


def require_api_key(res: Annotated[Resources, Depends(resources)],
                    key: Annotated[str | None, Depends(_key_header)]) -> None:
    # Constant time: the comparison must not reveal how much of a guess was right.
    if key is None or not hmac.compare_digest(key.encode(), res.api_key.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            f"missing or wrong API key: send the `api_key` from secrets.json "
                            f"in the {API_KEY_HEADER} header",
                            headers={"WWW-Authenticate": API_KEY_HEADER})


Res = Annotated[Resources, Depends(resources)]
