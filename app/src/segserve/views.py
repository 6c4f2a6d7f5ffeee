"""HTTP endpoints. Views stay thin: read the request, call the handler, shape the response."""

from __future__ import annotations

import functools
import importlib.resources
import json

from flask import Blueprint, Request, Response, current_app, g, jsonify, request

from segserve import metrics
from segserve.errors import BadImage, JsonTooLarge, NotReady, TooLarge, UnsupportedMediaType
from segserve.handler import Result, SegmentationHandler, SizeCheck
from segserve.images import encode_png, json_mask_bytes, json_mask_min_bytes, mask_to_json

bp = Blueprint("api", __name__)

RAW_TYPES = ("application/octet-stream",)

# What a client whose JSON answer would be too large can do instead, per endpoint.
SEGMENT_JSON_HINT = "ask for Accept: image/png or send a smaller image"
INFER_JSON_HINT = "send a smaller image, or use POST /v1/segment with Accept: image/png"


@bp.post("/v1/segment")
def segment() -> Response:
    handler = _ready_handler()
    data = read_image(request, strict=True)
    as_png = request.accept_mimetypes.best_match(["application/json", "image/png"]) == "image/png"
    # Only a JSON answer is bounded: a PNG mask is at most a byte per pixel before
    # compression, which the pixel limit (config.MAX_PIXELS) bounds already.
    limit = handler.settings.max_json_bytes
    check = None if as_png else _json_header_check(limit, SEGMENT_JSON_HINT)
    result = handler.handle(data, check_size=check)
    with result.timings.stage("encode"):
        if as_png:
            body, mimetype = encode_png(result.mask), "image/png"
        else:
            body = _segment_json(result, handler, limit)
            mimetype = "application/json"
    return _finish(result, body, mimetype)


@bp.post("/infer")
def infer() -> Response:
    """The original contract, kept for existing clients: raw bytes of any declared type in,
    a bare JSON list of lists of class ids out."""
    handler = _ready_handler()
    limit = handler.settings.max_json_bytes
    data = read_image(request, strict=False)
    result = handler.handle(data, check_size=_json_header_check(limit, INFER_JSON_HINT))
    _refuse_json_over(json_mask_bytes(result.mask, result.id_counts()), limit, INFER_JSON_HINT)
    with result.timings.stage("encode"):
        body = mask_to_json(result.mask)
    return _finish(result, body, "application/json")


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    _ready_handler()
    return jsonify(status="ready")


@bp.get("/v1/model")
def model() -> Response:
    return jsonify(_ready_handler().describe())


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(_openapi_document(), mimetype="application/json")


@functools.cache
def _openapi_document() -> bytes:
    """The API's OpenAPI 3.1 description, shipped in the package (src/segserve/openapi.json)."""
    return importlib.resources.files("segserve").joinpath("openapi.json").read_bytes()


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    settings = current_app.extensions["segserve"].settings
    body, content_type = metrics.render(settings.model_name, settings.uwsgi_stats_port)
    return Response(body, content_type=content_type)


def read_image(req: Request, *, strict: bool) -> bytes:
    """The image bytes from a raw body or from the multipart field `image`.

    With `strict`, a raw body must be declared as image/* or application/octet-stream (a
    missing Content-Type is taken as octet-stream). Flask's MAX_CONTENT_LENGTH answers 413
    before a too-large body is read.
    """
    mimetype = req.mimetype
    if mimetype == "multipart/form-data":
        upload = req.files.get("image")
        if upload is None:
            fields = sorted(set(req.files) | set(req.form))
            raise BadImage(
                f"the multipart body has no field 'image' (fields: {', '.join(fields) or 'none'})",
                code="missing_image_field",
            )
        data = upload.read()
    elif strict and mimetype and not (mimetype.startswith("image/") or mimetype in RAW_TYPES):
        raise UnsupportedMediaType(
            f"Content-Type {mimetype} is not accepted: send the image bytes as image/* or "
            "application/octet-stream, or multipart/form-data with a field 'image'"
        )
    else:
        data = req.get_data(cache=False)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if len(data) > limit:
        raise TooLarge(f"the image is {len(data)} bytes; the limit is {limit}")
    return data


def _ready_handler() -> SegmentationHandler:
    handler: SegmentationHandler | None = current_app.extensions.get("segserve")
    if handler is None or not handler.ready:
        raise NotReady("the model is not loaded yet")
    return handler


def _json_header_check(limit: int, hint: str) -> SizeCheck:
    """Refuse from the image's header, before decoding or inference, what no mask could fit:
    the smallest possible JSON mask of that size is already over the limit."""

    def check(width: int, height: int) -> None:
        _refuse_json_over(json_mask_min_bytes(width, height), limit, hint, at_least=True)

    return check


def _refuse_json_over(size: int, limit: int, hint: str, *, at_least: bool = False) -> None:
    if size > limit:
        bound = "at least " if at_least else ""
        raise JsonTooLarge(
            f"the JSON answer would be {bound}{size} bytes; the limit is {limit} bytes: {hint}"
        )


def _segment_json(result: Result, handler: SegmentationHandler, limit: int) -> bytes:
    names = handler.weights.categories
    classes = {str(i): names[i] if i < len(names) else str(i) for i in result.classes_present()}
    fields = {"width": result.width, "height": result.height, "classes": classes}
    head = json.dumps(fields, separators=(",", ":"))[:-1].encode() + b',"mask":'
    # Counted before any of the mask's text is built: what the ids' digits add up to.
    size = len(head) + json_mask_bytes(result.mask, result.id_counts()) + 1
    _refuse_json_over(size, limit, SEGMENT_JSON_HINT)
    # The mask is spliced in already encoded: json.dumps on a list of lists of a few million
    # ints is the slowest part of a JSON answer.
    return head + mask_to_json(result.mask) + b"}"


def _finish(result: Result, body: bytes, mimetype: str) -> Response:
    handler = current_app.extensions["segserve"]
    metrics.observe_stages(result.timings, handler.settings.model_name, handler.device)
    g.segserve_timings = result.timings  # for the request's log record (segserve.app)
    response = Response(body, mimetype=mimetype)
    response.headers["Server-Timing"] = ", ".join(
        f"{stage};dur={seconds * 1000:.1f}" for stage, seconds in result.timings.items()
    )
    response.headers["X-Segserve-Size"] = f"{result.width}x{result.height}"
    response.headers["X-Segserve-Classes"] = ",".join(map(str, result.classes_present()))
    return response
