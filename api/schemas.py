"""Request and response bodies: the API's contract, and what OpenAPI documents."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import models_json_schema
from pydantic_core import InitErrorDetails, PydanticCustomError

from patternalarm import domains
from patternalarm.events import ATTRIBUTES, ENVELOPE, Contract

M = TypeVar("M", bound=BaseModel)
Domain = Literal["payments", "gaming", "iot"]
Status = Literal["open", "acknowledged", "resolved"]
# The pattern of text parameters: PostgreSQL text cannot hold NUL, so one is a bad field (422)
# rather than a driver error (500).
NO_NUL = r"^[^\x00]*$"


class Incident(BaseModel):
    incident_key: str
    domain: Domain
    entity_id: str
    detector: str
    detector_kind: Literal["rule", "model"]
    window_start: datetime
    severity: Literal["low", "medium", "high", "critical"]
    score: float | None
    model_name: str | None
    model_version: str | None
    first_event_time: datetime
    last_event_time: datetime
    detected_at: datetime
    last_seen_at: datetime
    event_count: int
    trigger_count: int
    status: Status
    status_changed_at: datetime | None


class IncidentDetail(Incident):
    evidence: dict[str, Any] = Field(description="what the detector saw: events, features, rule")


class IncidentPage(BaseModel):
    items: list[Incident]
    total: int = Field(description="incidents matching the filters, over all pages")
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last")


class IncidentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["acknowledged", "resolved"]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: bool
    models: dict[str, str | None] = Field(
        description="domain -> champion version in memory (null until first scored)")


# --- scoring --------------------------------------------------------------------------------

MAX_EVENTS = 1_000   # history of one entity sent to /predict
MAX_BATCH = 10_000   # items of one /predict/batch; more is answered 413

MAX_EVENT_ERRORS = 20  # per request item: enough to fix a client, bounded for a hostile one

FeatureValue = Annotated[float, Field(allow_inf_nan=False)]


def _contract_errors(contract: Contract, event: object, loc: tuple) -> list[InitErrorDetails]:
    """The contract's problems of one event, each located at the field it names.

    A problem reads ``<field path>: <what is wrong>``; one whose path is not a contract field
    (an unknown field, whose name may hold anything) stays on the event, message whole.
    """
    fields = {f.name for f in ENVELOPE} | {"payload"} | {
        f"payload.{f.name}" for f in (*contract.payload, ATTRIBUTES)}
    errors = []
    for problem in contract.problems(event):
        path, _, what = problem.partition(": ")
        where = (*loc, *path.split(".")) if path in fields else loc
        errors.append(InitErrorDetails(
            type=PydanticCustomError("contract", "{problem}",
                                     {"problem": what if path in fields else problem}),
            loc=where, input=event))
    return errors


def parse(model: type[M], raw: bytes) -> M:
    """A request body decoded and validated by pydantic in one pass over the bytes.

    The routes that take large bodies call this in a worker thread, so decoding and checking
    megabytes never stalls the event loop. Errors have FastAPI's 422 shape. pydantic's own
    decoder keeps big numbers as they are, so 1e400 or a 400-digit integer is refused by the
    field it was sent in, and the error's loc names it.
    """
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


class PredictRequest(BaseModel):
    """One entity's recent events (oldest first; the last is scored) or a feature vector."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"domain": "iot", "features": {"value": 21.5, "spike_z": 9.1, "drift_z": 0.4,
                                       "repeat_run": 1, "secs_since_last": 10,
                                       "gap_ratio": 1.0, "battery_pct": 80,
                                       "history_len": 500}},
    ]})

    domain: Domain
    features: dict[str, FeatureValue] | None = Field(
        None, description="feature name -> value, every feature the model uses")
    events: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_EVENTS)] | None = (
        Field(None, description="events of one entity in the wire format, oldest first"))

    @field_validator("events")
    @classmethod
    def _events_follow_the_contract(cls, events: list[dict[str, Any]] | None,
                                    info: ValidationInfo) -> list[dict[str, Any]] | None:
        domain = info.data.get("domain")
        if events is None or domain is None:
            return events
        contract = domains.contract(domain)
        errors = [error for i, event in enumerate(events)
                  for error in _contract_errors(contract, event, (i,))]
        if errors:
            # pydantic nests these under the field, so each error's loc names the event field.
            raise ValidationError.from_exception_data("events", errors[:MAX_EVENT_ERRORS])
        if len({e["entity_id"] for e in events}) > 1:
            raise ValueError("events must all belong to one entity")
        return events

    @model_validator(mode="after")
    def _one_input(self) -> PredictRequest:
        if (self.features is None) == (self.events is None):
            raise ValueError("send exactly one of `features` or `events`")
        return self


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: Annotated[list[PredictRequest], Field(min_length=1, max_length=MAX_BATCH)]


class Contribution(BaseModel):
    feature: str
    value: float
    contribution: float = Field(
        description="the feature's share of the score along the trees' paths: log-odds for "
                    "gradient-boosted trees, probability for random forests")


class Prediction(BaseModel):
    domain: Domain
    probability: float = Field(description="probability of an anomaly (Spark's, to 1e-9)")
    anomaly: bool = Field(description="the model's decision, as the stream makes it")
    threshold: float | None = Field(
        description="anomaly = probability > threshold (chosen at training for a target "
                    "precision); null: the Spark model's own rule")
    model_name: str
    model_version: str
    top_features: list[Contribution] = Field(description="the features that moved the score most")


class BatchPrediction(BaseModel):
    items: list[Prediction]


# Bodies that routes decode themselves (see parse) are documented by reference, and their
# schemas added to the OpenAPI components by the app: FastAPI only documents what it decodes.
_SCHEMA_REF = "#/components/schemas/{model}"


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a route whose body is `model`."""
    ref = _SCHEMA_REF.format(model=model.__name__)
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": {"$ref": ref}}}}}


def body_schemas() -> dict[str, Any]:
    """OpenAPI component schemas of the self-decoded bodies and the models they nest."""
    _, schema = models_json_schema([(m, "validation") for m in (PredictRequest, BatchRequest)],
                                   ref_template=_SCHEMA_REF)
    return schema["$defs"]
