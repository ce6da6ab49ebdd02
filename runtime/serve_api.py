"""The HTTP API's request schema, its checks, its answers and its OpenAPI document (no server
code here: runtime/serve.py and runtime/serve_ray.py both use it).

    POST /v1/classify  {"texts": ["...", ...]}              single-text tasks
                       {"pairs": [["a", "b"], ...]}          pair tasks
                       optional "policy": {"name": ..., "threshold" | "exit_layer" | "patience" | "per_layer"}
                       optional "timeout_ms": a deadline shorter than the server's
    -> 200 {"results": [{"label", "scores", "exit_layer", "truncated"} | {"value", ...} | {"error", ...}],
            "policy": "...", "model": {...}}
Errors: {"error": {"kind": ..., "message": ...}} with the status in ERROR_STATUS.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from .chain import ChainResult

# kind -> HTTP status. Every error the server sends is one of these.
ERROR_STATUS = {
    "bad_json": 400, "bad_request": 400, "bad_input": 400, "bad_policy": 400,
    "not_found": 404, "method_not_allowed": 405, "unsupported_media_type": 415,
    "body_too_large": 413, "too_many_texts": 413, "queue_full": 429,
    "internal": 500, "not_ready": 503, "shutting_down": 503, "deadline_exceeded": 504,
}
POLICY_KEYS = ("name", "threshold", "exit_layer", "patience", "per_layer")


class ApiError(Exception):
    """An answer with an error status; `retry_after_s` adds a Retry-After header."""

    def __init__(self, kind: str, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.kind, self.message, self.retry_after_s = kind, message, retry_after_s
        self.status = ERROR_STATUS[kind]

    def body(self) -> dict:
        return {"error": {"kind": self.kind, "message": self.message}}


@dataclass(frozen=True)
class ClassifyRequest:
    texts_a: list[str]
    texts_b: list[str] | None
    policy: dict | None  # checked keys and types; values are checked by the model's policy()
    timeout_ms: float | None


def parse_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ApiError("bad_json", "the body is not UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise ApiError("bad_json", f"the body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_classify(obj: object, text_pair: bool, max_texts: int) -> ClassifyRequest:
    """Check a decoded body against the schema; ApiError says what is wrong."""
    bad = lambda msg: ApiError("bad_request", msg)  # noqa: E731
    if not isinstance(obj, dict):
        raise bad(f"the body must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"texts", "pairs", "policy", "timeout_ms"})
    if unknown:
        raise bad(f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: texts or pairs, policy, timeout_ms")
    want, other = ("pairs", "texts") if text_pair else ("texts", "pairs")
    if other in obj:
        raise bad(f"this model takes {'pairs of texts' if text_pair else 'single texts'}: send '{want}', not '{other}'")
    if want not in obj:
        raise bad(f"missing field '{want}'")
    items = obj[want]
    if not isinstance(items, list) or not items:
        raise bad(f"'{want}' must be a non-empty list")
    if len(items) > max_texts:
        raise ApiError("too_many_texts", f"{len(items)} {want} in one request; this server takes at most {max_texts}")
    a, b = [], []
    for i, it in enumerate(items):
        if text_pair:
            if not (isinstance(it, list) and len(it) == 2 and all(isinstance(t, str) for t in it)):
                raise bad(f"pairs[{i}] must be a list of two strings")
            a.append(it[0])
            b.append(it[1])
        else:
            if not isinstance(it, str):
                raise bad(f"texts[{i}] must be a string, got {type(it).__name__}")
            a.append(it)
    pol = obj.get("policy")
    if pol is not None:
        if not isinstance(pol, dict):
            raise bad("'policy' must be an object such as {\"name\": \"confidence\", \"threshold\": 0.9}")
        extra = sorted(set(pol) - set(POLICY_KEYS))
        if extra:
            raise bad(f"unknown policy field(s) {', '.join(map(repr, extra))}; allowed: {', '.join(POLICY_KEYS)}")
        if not isinstance(pol.get("name"), str):
            raise bad("policy.name must be a string (confidence, entropy, lte, patience, fixed)")
        if "threshold" in pol and not _number(pol["threshold"]):
            raise bad("policy.threshold must be a finite number")
        for k in ("exit_layer", "patience"):
            if k in pol and not _integer(pol[k]):
                raise bad(f"policy.{k} must be an integer")
        if "per_layer" in pol and not (isinstance(pol["per_layer"], list) and all(_number(x) for x in pol["per_layer"])):
            raise bad("policy.per_layer must be a list of finite numbers, one per exit")
    t = obj.get("timeout_ms")
    if t is not None and not (_number(t) and t > 0):
        raise bad("timeout_ms must be a positive number")
    return ClassifyRequest(a, b if text_pair else None, pol, None if t is None else float(t))


def results_json(res: ChainResult, truncated: np.ndarray, kind: str, labels: tuple[str, ...]) -> list[dict]:
    """One JSON object per row: label + softmax scores (classification) or value (regression)."""
    out = []
    for r in range(len(res.exit_layer)):
        row: dict = {}
        lg = res.logits[r].astype(np.float64)
        if res.error[r] is not None:
            row["error"] = res.error[r]
        elif kind == "classification":
            p = np.exp(lg - lg.max())
            p /= p.sum()
            row["label"] = labels[int(np.argmax(lg))]
            row["scores"] = {lab: float(x) for lab, x in zip(labels, p)}
        else:
            row["value"] = float(lg[0])
        row["exit_layer"] = int(res.exit_layer[r])
        row["truncated"] = bool(truncated[r])
        out.append(row)
    return out


_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["kind", "message"],
    "properties": {"kind": {"type": "string", "enum": sorted(ERROR_STATUS)}, "message": {"type": "string"}}}}}


def openapi(task: str, text_pair: bool, labels: tuple[str, ...], max_texts: int, version: str) -> dict:
    """The OpenAPI 3.1 document of this server (what `parse_classify` accepts)."""
    items = ({"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2}
             if text_pair else {"type": "string"})
    field_name = "pairs" if text_pair else "texts"
    policy = {"type": "object", "additionalProperties": False, "required": ["name"], "properties": {
        "name": {"type": "string", "enum": ["confidence", "entropy", "lte", "patience", "fixed"]},
        "threshold": {"type": "number"}, "exit_layer": {"type": "integer", "minimum": 1},
        "patience": {"type": "integer", "minimum": 1}, "per_layer": {"type": "array", "items": {"type": "number"}}}}
    req = {"type": "object", "additionalProperties": False, "required": [field_name], "properties": {
        field_name: {"type": "array", "items": items, "minItems": 1, "maxItems": max_texts},
        "policy": policy, "timeout_ms": {"type": "number", "exclusiveMinimum": 0}}}
    row = {"type": "object", "required": ["exit_layer", "truncated"], "properties": {
        "label": {"type": "string", "enum": list(labels)} if labels else {"type": "string"},
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        "value": {"type": "number"}, "exit_layer": {"type": "integer"}, "truncated": {"type": "boolean"},
        "error": {"type": "string"}}}
    resp = {"type": "object", "required": ["results"], "properties": {
        "results": {"type": "array", "items": row}, "policy": {"type": "string"}, "model": {"type": "object"}}}
    err = lambda d: {"description": d, "content": {"application/json": {"schema": _ERROR}}}  # noqa: E731
    ok = lambda d: {"200": {"description": d, "content": {"text/plain": {"schema": {"type": "string"}}}}}  # noqa: E731
    return {
        "openapi": "3.1.0",
        "info": {"title": f"berxit-rt early-exit classifier ({task})", "version": version},
        "paths": {
            "/v1/classify": {"post": {
                "summary": "Classify texts with early exit (rows of many requests batched per layer)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": req}}},
                "responses": {"200": {"description": "one result per input row, in order",
                                      "content": {"application/json": {"schema": resp}}},
                              "400": err("malformed JSON, wrong types, bad text or policy"),
                              "413": err("body or text count over the limit"),
                              "429": err("queue full (see Retry-After)"),
                              "503": err("model not loaded yet, or shutting down"),
                              "504": err("deadline passed")}}},
            "/healthz": {"get": {"summary": "the process is up", "responses": ok("ok")}},
            "/readyz": {"get": {"summary": "the model is loaded", "responses": {**ok("ready"), "503": err("not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus text metrics", "responses": ok("metrics")}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI"}}}},
        },
    }
