"""segserve-client: send images to a segserve server, print what it found, write overlays.

    segserve-client IMAGE... --url http://HOST:PORT [--overlay OUT.png | --overlay DIR]
                    [--model NAME] [--format png|json] [--timeout SECONDS]
                    [--concurrency N] [--retries N] [--max-wait SECONDS]

HTTP goes through the standard library only (urllib). Pillow, a dependency of the package
anyway, is imported only to draw overlays or to decode a JSON mask into one.
One line per image on stdout; errors on stderr; exit status 1 if any image failed, after a
summary of what failed.

An answer that says "come back later" (429, 502, 503, 504: nginx's limits and a fleet with no
ready host send them with Retry-After) is retried, at most --retries times per image: after
the Retry-After the server asked for, or without one after an exponential backoff, each wait
stretched by a random part of itself so that clients refused together do not return together.
A server asking for more than --max-wait seconds is not waited for: the image fails at once.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import random
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from segserve.overlay import write_overlay
from segserve.retry import RETRYABLE, RetryPolicy, parse_retry_after

PROG = "segserve-client"


@dataclass
class Answer:
    width: int
    height: int
    classes: list[int]
    body: bytes
    fmt: str
    millis: float


class ClientError(Exception):
    """An image that failed; `kind` groups failures in the summary."""

    def __init__(
        self, message: str, kind: str, retry_after: float | None = None, retryable: bool = False
    ):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after
        self.retryable = retryable


def endpoints(url: str, model: str | None) -> tuple[str, str]:
    """The segment and model-info URLs: the default model's (/v1/segment, /v1/model), or
    those of the model a fleet routes by name (/v1/models/NAME/segment, /v1/models/NAME)."""
    if model is None:
        return f"{url}/v1/segment", f"{url}/v1/model"
    base = f"{url}/v1/models/{urllib.parse.quote(model, safe='')}"
    return f"{base}/segment", base


def segment(url: str, path: Path, fmt: str, timeout: float) -> Answer:
    """Send one image to `url`, a segment endpoint (endpoints())."""
    data = path.read_bytes()
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not ctype.startswith("image/"):
        ctype = "application/octet-stream"
    accept = "image/png" if fmt == "png" else "application/json"
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": ctype, "Accept": accept},
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            headers = response.headers
    except urllib.error.HTTPError as exc:
        message, kind = _server_error(exc)
        raise ClientError(
            message,
            kind,
            retry_after=parse_retry_after(exc.headers.get("Retry-After")),
            retryable=exc.code in RETRYABLE,
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClientError(f"cannot reach {url}: {reason}", "cannot reach") from None
    millis = (time.perf_counter() - started) * 1000
    if fmt == "json":
        answer = json.loads(body)
        classes = sorted(int(k) for k in answer["classes"])
        return Answer(answer["width"], answer["height"], classes, body, fmt, millis)
    width, height = (int(v) for v in headers.get("X-Segserve-Size", "0x0").split("x"))
    raw_classes = headers.get("X-Segserve-Classes", "")
    classes = [int(c) for c in raw_classes.split(",") if c]
    return Answer(width, height, classes, body, fmt, millis)


def segment_retrying(
    url: str, path: Path, fmt: str, timeout: float, policy: RetryPolicy, rng: random.Random
) -> tuple[Answer, int]:
    """segment(), retried as the policy allows; the answer and how many retries it took."""
    attempt = 0
    while True:
        try:
            return segment(url, path, fmt, timeout), attempt
        except ClientError as exc:
            if not exc.retryable:
                raise
            attempt += 1
            wait = policy.wait(attempt, exc.retry_after, rng)
            if wait is None:
                exc.retries = attempt - 1
                if exc.retry_after is not None and exc.retry_after > policy.max_wait:
                    exc.args = (
                        f"{exc}; the server asks for a retry after {exc.retry_after:.0f}"
                        f" s, more than --max-wait {policy.max_wait:g}",
                    )
                elif attempt > 1:
                    exc.args = (f"{exc} (after {attempt - 1} retries)",)
                raise
            time.sleep(wait)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    url = args.url.rstrip("/")
    url = url.removesuffix("/v1/segment").removesuffix("/infer")
    images = [Path(p) for p in args.images]
    overlay_dir = _overlay_dir(args.overlay, len(images))
    segment_url, model_url = endpoints(url, args.model)
    names = _class_names(model_url, args.timeout)
    policy = RetryPolicy(args.retries, args.max_wait)
    show = _Progress(len(images), enabled=len(images) > 1 and sys.stderr.isatty())
    failures: Counter[str] = Counter()
    retries = 0

    def one(path: Path) -> None:
        nonlocal retries
        try:
            answer, tried = segment_retrying(
                segment_url, path, args.format, args.timeout, policy, random.Random()
            )
            found = ", ".join(names.get(c, str(c)) for c in answer.classes) or "none"
            line = f"{path}: {answer.width}x{answer.height}, classes: {found}, "
            line += f"{answer.millis:.0f} ms"
            if tried:
                line += f", {tried} retries"
            if args.overlay:
                out = (
                    overlay_dir / f"{path.stem}.overlay.png" if overlay_dir else Path(args.overlay)
                )
                write_overlay(path, answer, out)
                line += f", overlay {out}"
            show.done(path.name, line, sys.stdout)
            with show.lock:
                retries += tried
        except Exception as exc:
            # One image's failure, whatever it is (a server's odd answer included), is
            # reported and counted; the other images go on.
            with show.lock:
                failures[getattr(exc, "kind", type(exc).__name__)] += 1
                retries += getattr(exc, "retries", 0)
            show.done(path.name, f"{PROG}: {path}: {exc}", sys.stderr)

    pool = ThreadPoolExecutor(max_workers=args.concurrency)
    try:
        # list(): re-raises anything unexpected from a worker instead of dropping it.
        list(pool.map(one, images))
    except KeyboardInterrupt:
        # Images not yet started are dropped; those in flight end at their timeout.
        pool.shutdown(wait=False, cancel_futures=True)
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    pool.shutdown()
    show.finish()
    failed = sum(failures.values())
    if failed:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in failures.most_common())
        print(
            f"{PROG}: {failed} of {len(images)} image(s) failed ({kinds}); "
            f"{len(images) - failed} segmented, {retries} retries",
            file=sys.stderr,
        )
    return 1 if failed else 0


class _Progress:
    """Result lines as images finish, and a progress bar on stderr's terminal under them."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.count = total, enabled, 0
        self.lock = threading.Lock()

    def done(self, name: str, line: str, stream) -> None:
        with self.lock:
            self.count += 1
            if self.enabled:
                sys.stderr.write("\r\033[K")
            print(line, file=stream, flush=True)
            if self.enabled:
                self._bar(name)

    def finish(self) -> None:
        if self.enabled:
            self._bar("done")
            sys.stderr.write("\n")

    def _bar(self, name: str) -> None:
        width = 30
        filled = width * self.count // self.total
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r\033[K[{bar}] {self.count}/{self.total} {name}")
        sys.stderr.flush()


def _overlay_dir(overlay: str | None, count: int) -> Path | None:
    if overlay is None:
        return None
    target = Path(overlay)
    if target.is_dir() or overlay.endswith("/") or (count > 1 and target.suffix == ""):
        return target
    if count > 1:
        raise SystemExit(
            f"{PROG}: error: --overlay must be a directory when sending several images"
        )
    return None


def _class_names(url: str, timeout: float) -> dict[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return {int(k): v for k, v in json.loads(response.read())["classes"].items()}
    except Exception:
        # Names are a nicety; ids are printed instead, and /v1/segment reports real errors.
        return {}


def _server_error(exc: urllib.error.HTTPError) -> tuple[str, str]:
    """The message shown for an error answer, and its kind for the summary."""
    try:
        body = json.loads(exc.read())
        return f"HTTP {exc.code} {body['error']}: {body['detail']}", f"{exc.code} {body['error']}"
    except Exception:
        return f"HTTP {exc.code} {exc.reason}", f"{exc.code}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Segment images with a segserve server."
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to send")
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--overlay",
        metavar="OUT",
        help="write the colour overlay as PNG: a file for one image, a directory for several",
    )
    parser.add_argument(
        "--format",
        choices=("png", "json"),
        default="png",
        help="how the mask travels (default png: much smaller than json)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="the model to ask, by its name in the fleet (GET /v1/models lists them); "
        "default: the fleet's default model",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument(
        "--concurrency",
        type=_at_least(1),
        default=1,
        metavar="N",
        help="images in flight at once (default 1: in order); lines print as images finish",
    )
    parser.add_argument(
        "--retries",
        type=_at_least(0),
        default=4,
        metavar="N",
        help="retries per image of an answer 429, 502, 503 or 504 (default 4)",
    )
    parser.add_argument(
        "--max-wait",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="the longest wait before one retry; a longer Retry-After fails the image (default 30)",
    )
    return parser


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be a number of seconds from 0 to 3600")
    return value


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
