"""Scoring with each domain's champion: one request, or a batch with the same answers.

Both endpoints read the body on the event loop (I/O) and do everything else in a worker
thread: decoding and validating up to the body limit, computing features and walking the
trees are CPU work that would otherwise hold up every other request, /health included.
"""

from __future__ import annotations

import json
from collections import defaultdict

import anyio.to_thread
from fastapi import APIRouter, Request, Response

from api.deps import Res, Resources
from api.schemas import BatchPrediction, BatchRequest, Prediction, PredictRequest, body_doc, parse
from api.scoring import predict_many

router = APIRouter(prefix="/predict", tags=["scoring"])

_ERRORS = {
    401: {"description": "missing or wrong API key"},
    413: {"description": "a body over the byte limit, or more items than the batch limit"},
    422: {"description": "invalid body, or features the model needs are missing"},
    503: {"description": "no champion model for the domain yet (the message says how to train)"},
}


def json_response(content: object) -> Response:
    """Answers the scorer built in the documented shape, sent as they are: a returned Response
    skips FastAPI's validation of the output, which would cost more than the scoring."""
    # allow_nan=False: NaN is not JSON; fail here rather than in the client's parser.
    body = json.dumps(content, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, media_type="application/json")


def _predict_one(res: Resources, raw: bytes) -> Response:
    body = parse(PredictRequest, raw)
    (prediction,) = predict_many(res.models.champion(body.domain), [body], ("body",))
    res.telemetry.predictions.labels(body.domain, str(prediction["anomaly"]).lower()).inc()
    return json_response(prediction)


def _predict_batch(res: Resources, raw: bytes) -> Response:
    body = parse(BatchRequest, raw)
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


@router.post("", response_model=Prediction, summary="Score one entity or feature vector",
             responses=_ERRORS, openapi_extra=body_doc(PredictRequest))
async def predict(res: Res, request: Request) -> Response:
    raw = await request.body()
    return await anyio.to_thread.run_sync(_predict_one, res, raw, limiter=res.scoring)


@router.post("/batch", response_model=BatchPrediction, summary="Score many at once",
             responses=_ERRORS, openapi_extra=body_doc(BatchRequest))
async def predict_batch(res: Res, request: Request) -> Response:
    raw = await request.body()
    return await anyio.to_thread.run_sync(_predict_batch, res, raw, limiter=res.scoring)
