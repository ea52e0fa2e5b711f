"""Scoring with each domain's champion: one request, or a batch with the same answers."""

from __future__ import annotations

import json
from collections import defaultdict

from fastapi import APIRouter, Response

from api.deps import Res
from api.schemas import BatchPrediction, BatchRequest, Prediction, PredictRequest
from api.scoring import predict_many

router = APIRouter(prefix="/predict", tags=["scoring"])

_ERRORS = {
    401: {"description": "missing or wrong API key"},
    413: {"description": "more items than the batch limit"},
    422: {"description": "invalid body, or features the model needs are missing"},
    503: {"description": "no champion model for the domain yet (the message says how to train)"},
}


def json_response(content: object) -> Response:
    """Answers the scorer built in the documented shape, sent as they are: a returned Response
    skips FastAPI's validation of the output, which would cost more than the scoring."""
    # allow_nan=False: NaN is not JSON; fail here rather than in the client's parser.
    body = json.dumps(content, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, media_type="application/json")


@router.post("", response_model=Prediction, summary="Score one entity or feature vector",
             responses={k: v for k, v in _ERRORS.items() if k != 413})
async def predict(res: Res, body: PredictRequest) -> Response:
    # async: scoring one row is tens of microseconds of numpy; a thread hop would cost more.
    (prediction,) = predict_many(res.models.champion(body.domain), [body], ("body",))
    res.telemetry.predictions.labels(body.domain, str(prediction["anomaly"]).lower()).inc()
    return json_response(prediction)


@router.post("/batch", response_model=BatchPrediction, summary="Score many at once",
             responses=_ERRORS)
def predict_batch(res: Res, body: BatchRequest) -> Response:
    # One matrix per domain: the per-prediction cost is what makes batches worth sending.
    by_domain: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(body.items):
        by_domain[item.domain].append(i)
    answers: list[dict | None] = [None] * len(body.items)
    for domain, positions in by_domain.items():
        champion = res.models.champion(domain)
        items = [body.items[i] for i in positions]
        predictions = predict_many(champion, items, ("body", "items"), positions)
        for i, prediction in zip(positions, predictions, strict=True):
            answers[i] = prediction
        anomalies = sum(p["anomaly"] for p in predictions)
        res.telemetry.predictions.labels(domain, "true").inc(anomalies)
        res.telemetry.predictions.labels(domain, "false").inc(len(predictions) - anomalies)
    return json_response({"items": answers})
