"""The Flask application factory."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from flask import Config, Flask, g, jsonify, request
from PIL import Image
from werkzeug.exceptions import HTTPException, NotFound

from segserve import config, gpus, logs, metrics
from segserve.backends import ARTIFACT_BACKENDS
from segserve.config import LOG_FORMAT, PREFIX, Settings, unknown_keys
from segserve.errors import ServiceError, StartupError
from segserve.handler import UNTRAINED_WARNING, SegmentationHandler

log = logging.getLogger("segserve")

# What the metrics-only port (SEGSERVE_METRICS_PORT) answers: GET and these routes, no others.
METRICS_PORT_ROUTES = frozenset({"/metrics", "/healthz"})
# A client-controlled value in a log line is cut to this many characters, once escaped.
LOG_VALUE_CHARS = 300


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app, load the model and warm it up; raise if the service must not start.

    `config` replaces the environment (keys without the SEGSERVE_ prefix), for tests.
    Under uWSGI this runs in each worker after fork (lazy-apps), so every worker owns its
    model and nothing touches CUDA in the master. A failure logs one line starting with
    "refusing to start:" and raises, which makes uWSGI's need-app exit non-zero.
    """
    app = Flask(__name__)
    # Class ids are keys of JSON objects; keep them in id order, not sorted as strings.
    app.json.sort_keys = False
    if config is None:
        values = Config(app.root_path)
        # loads=str: the default JSON decoding would turn an all-digit sha256 into an int.
        values.from_prefixed_env(PREFIX, loads=str)
    else:
        values = dict(config)
        # A test may pass Flask's own keys (TESTING, ...) beside segserve's.
        app.config.update({k: v for k, v in values.items() if k in app.config})
        values = {k: v for k, v in values.items() if k not in app.config}
    logs.configure(str(values.get(LOG_FORMAT.key, LOG_FORMAT.default)).strip().lower())
    logs.set_context(worker=gpus.worker_id())
    for name in unknown_keys(values):
        log.warning("ignoring unknown setting %s", name)

    try:
        settings = Settings.from_mapping(values)
        logs.set_context(model=settings.model_name)
        _check_process_model(settings)
        if settings.backend not in ARTIFACT_BACKENDS:
            # The artifact backends set their own threads, and their hosts may have no torch.
            _set_torch_threads(settings.torch_threads)
        # One limit for both: Flask refuses larger bodies before reading them, and Pillow's
        # own decompression-bomb check uses the pixel limit.
        app.config["MAX_CONTENT_LENGTH"] = settings.max_image_bytes
        Image.MAX_IMAGE_PIXELS = settings.max_pixels
        handler = SegmentationHandler(settings)
        handler.initialize()
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.error("refusing to start: %s", reason)
        if isinstance(exc, StartupError):
            raise
        raise StartupError(reason) from exc

    _log_started(handler)
    metrics.MODEL_LOADS.labels(
        handler.settings.model_name,
        handler.weights.arch,
        str(handler.weights.pretrained).lower(),
        handler.device,
    ).inc()
    metrics.BUILD_INFO.labels(**handler.build_info()).set(1)
    app.extensions["segserve"] = handler

    from segserve.views import bp

    app.register_blueprint(bp)
    _register_errors(app)
    if settings.metrics_port is not None:
        _register_metrics_port(app, settings.metrics_port)
    _register_hooks(app)
    return app


def log_value(value: object) -> str:
    """A client-controlled value (path, method, header) as it may appear in a log line:
    control characters, backslashes and non-ASCII escaped as Python writes them, so that no
    value can end the line and forge the next one (nginx decodes %0A in the path), and cut to
    LOG_VALUE_CHARS."""
    text = str(value).encode("unicode_escape").decode("ascii")
    if len(text) > LOG_VALUE_CHARS:
        text = text[:LOG_VALUE_CHARS] + "..."
    return text


def _check_process_model(settings: Settings) -> None:
    """Refuse CUDA when loaded in the uWSGI master: workers forked from a process that
    initialised CUDA cannot use it (pytorch#68861). lazy-apps loads the app in each worker."""
    try:
        import uwsgi  # only importable inside a uWSGI process
    except ImportError:
        return
    if getattr(uwsgi, "numproc", 1) > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        log.warning(
            "PROMETHEUS_MULTIPROC_DIR is not set: /metrics shows only the worker that "
            "answers it; set it to a fresh directory in uWSGI's environment"
        )
    if uwsgi.worker_id() != 0:
        return
    gpu_here = os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")
    if settings.device.startswith("cuda") or (settings.device == "auto" and gpu_here):
        raise StartupError(
            f"{config.DEVICE.env}={settings.device} while the app is loaded in the uWSGI master: "
            "run uWSGI with lazy-apps = true so each worker loads the model after fork, "
            f"or set {config.DEVICE.env}=cpu"
        )
    log.warning(
        "loaded in the uWSGI master (no lazy-apps): every worker shares the model built "
        "before fork; lazy-apps is the supported way to run segserve"
    )


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            # It can be set once per process, before any parallel work; a second app in the
            # same process (tests) keeps the first value.
            log.warning("torch inter-op threads stay at %d", torch.get_num_interop_threads())


def _log_started(handler: SegmentationHandler) -> None:
    w = handler.weights
    # The backend's details (an ONNX artifact's path, sha256 and agreement) are for operators:
    # the log has them, the public /v1/model does not.
    log.info(
        "ready: worker=%d model=%s arch=%s device=%s backend=%s precision=%s input_size=%d "
        "threads=%d weights=%s sha256=%s source=%s warm-up=%.0fms backend_details=%s",
        gpus.worker_id(),
        handler.settings.model_name,
        w.arch,
        handler.device,
        handler.settings.backend,
        handler.settings.precision,
        handler.settings.input_size,
        handler.settings.torch_threads,
        w.path,
        w.sha256,
        w.source,
        handler.warmup_seconds * 1000,
        json.dumps(handler.backend.describe(), separators=(",", ":")),
    )
    if not w.pretrained:
        log.warning("%s (weights %s, source %s)", UNTRAINED_WARNING, w.path, w.source)


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        return jsonify(error=exc.code, detail=exc.detail), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        response = exc.get_response()
        code = (exc.name or "error").lower().replace(" ", "_")
        if exc.code == 413:
            code = "too_large"
            detail = f"the request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        else:
            detail = exc.description or exc.name
        response.set_data(jsonify(error=code, detail=detail).get_data())
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        # The traceback goes to the log only; the client learns nothing about the internals.
        log.exception(
            "unhandled error on %s %s", log_value(request.method), log_value(request.path)
        )
        return jsonify(error="internal_error", detail="internal server error (logged)"), 500


def _register_metrics_port(app: Flask, port: int) -> None:
    """On `port`, answer GET /metrics and GET /healthz only; anything else is the JSON 404 of
    an unknown path. uWSGI exposes an http-socket on the host's private address for the
    monitoring hosts to scrape, and that socket must not run inference or show the model.

    uWSGI's http-socket sets SERVER_PORT to its own port. Requests through nginx (the uwsgi
    socket) carry nginx's port instead, so this port must not be one nginx listens on.
    """
    wanted = str(port)

    @app.before_request
    def metrics_port_only():
        if request.environ.get("SERVER_PORT") != wanted:
            return None
        rule = request.url_rule
        if request.method == "GET" and rule is not None and rule.rule in METRICS_PORT_ROUTES:
            return None
        # Counted as unmatched, as it is answered: the route does not exist on this port.
        g.segserve_unmatched = True
        raise NotFound()


def _register_hooks(app: Flask) -> None:
    @app.before_request
    def start_clock():
        g.segserve_started = time.perf_counter()

    handler = app.extensions["segserve"]
    # Every series carries the model's name: one Prometheus sees several models per host.
    model = handler.settings.model_name
    log_requests = handler.settings.log_requests

    @app.after_request
    def count(response):
        # The route pattern, not the raw path, so that scanners cannot create label values.
        rule = request.url_rule
        unmatched = rule is None or g.get("segserve_unmatched", False)
        endpoint = "unmatched" if unmatched else rule.rule
        started = g.get("segserve_started")
        if started is not None:
            # The worker's device: on a GPU host each worker has its own (segserve.gpus).
            device = handler.device
            metrics.REQUEST_SECONDS.labels(model, endpoint, device).observe(
                time.perf_counter() - started
            )
        metrics.REQUESTS.labels(model, endpoint, str(response.status_code)).inc()
        if started is not None and _logged(endpoint, response.status_code, log_requests):
            _log_request(endpoint, response, time.perf_counter() - started)
        return response


# Answered many times a minute to nginx's and Prometheus' probes: logged only when they fail.
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


def _logged(endpoint: str, status: int, which: str) -> bool:
    if which == "none":
        return False
    if status >= 400:
        return True
    return which == "all" and endpoint not in PROBES


def _log_request(endpoint: str, response, seconds: float) -> None:
    """The request's record: what was asked, the answer, and where the time went."""
    fields = {
        "method": logs.clip(request.method),
        "endpoint": endpoint,
        "status": response.status_code,
        "ms": round(seconds * 1000, 1),
        "bytes_in": request.content_length or 0,
        "bytes_out": response.calculate_content_length(),
    }
    if endpoint == "unmatched":
        fields["path"] = logs.clip(request.path)
    timings = g.get("segserve_timings")
    if timings is not None:
        fields["stages_ms"] = {stage: round(s * 1000, 1) for stage, s in timings.items()}
    log.info("request", extra={"fields": fields})
