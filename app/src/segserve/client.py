"""segserve-client: send images to a segserve server, print what it found, write overlays.

    segserve-client IMAGE... --url http://HOST:PORT [--overlay OUT.png | --overlay DIR]
                    [--model NAME] [--format png|json] [--timeout SECONDS]

HTTP goes through the standard library only (urllib). Pillow, a dependency of the package
anyway, is imported only to draw overlays or to decode a JSON mask into one.
One line per image on stdout; errors on stderr; exit status 1 if any image failed.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

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
    pass


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map: class id bits spread over the high bits of R, G and B."""
    colours = []
    for index in range(n):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return colours


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
        raise ClientError(_server_error(exc)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClientError(f"cannot reach {url}: {reason}") from None
    millis = (time.perf_counter() - started) * 1000
    if fmt == "json":
        answer = json.loads(body)
        classes = sorted(int(k) for k in answer["classes"])
        return Answer(answer["width"], answer["height"], classes, body, fmt, millis)
    width, height = (int(v) for v in headers.get("X-Segserve-Size", "0x0").split("x"))
    raw_classes = headers.get("X-Segserve-Classes", "")
    classes = [int(c) for c in raw_classes.split(",") if c]
    return Answer(width, height, classes, body, fmt, millis)


def write_overlay(image_path: Path, answer: Answer, out: Path, alpha: float = 0.5) -> None:
    import io

    from PIL import Image, ImageOps

    with Image.open(image_path) as original:
        photo = ImageOps.exif_transpose(original).convert("RGB")
    if answer.fmt == "png":
        with Image.open(io.BytesIO(answer.body)) as png:
            mask = png.convert("L")
    else:
        rows = json.loads(answer.body)["mask"]
        mask = Image.new("L", (answer.width, answer.height))
        mask.putdata([v for row in rows for v in row])
    if mask.size != photo.size:
        # The server answers at the upright size of what it received; match it just in case
        # the local decoder disagrees about orientation.
        photo = photo.resize(mask.size)
    colour = mask.copy()
    colour.putpalette([c for rgb in voc_palette() for c in rgb])
    blended = Image.blend(photo, colour.convert("RGB"), alpha)
    # Background (class 0) stays as the photo; only found objects are tinted.
    foreground = mask.point(lambda v: 255 if v else 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.composite(blended, photo, foreground).save(out, format="PNG")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    url = args.url.rstrip("/")
    url = url.removesuffix("/v1/segment").removesuffix("/infer")
    images = [Path(p) for p in args.images]
    overlay_dir = _overlay_dir(args.overlay, len(images))
    segment_url, model_url = endpoints(url, args.model)
    names = _class_names(model_url, args.timeout)
    progress = len(images) > 1 and sys.stderr.isatty()
    failed = 0
    for done, path in enumerate(images, start=1):
        if progress:
            _progress(done - 1, len(images), path.name)
        try:
            answer = segment(segment_url, path, args.format, args.timeout)
            found = ", ".join(names.get(c, str(c)) for c in answer.classes) or "none"
            line = (
                f"{path}: {answer.width}x{answer.height}, classes: {found}, {answer.millis:.0f} ms"
            )
            if args.overlay:
                out = (
                    overlay_dir / f"{path.stem}.overlay.png" if overlay_dir else Path(args.overlay)
                )
                write_overlay(path, answer, out)
                line += f", overlay {out}"
            if progress:
                sys.stderr.write("\r\033[K")
            print(line, flush=True)
        except (ClientError, OSError, ValueError) as exc:
            failed += 1
            if progress:
                sys.stderr.write("\r\033[K")
            print(f"{PROG}: {path}: {exc}", file=sys.stderr, flush=True)
    if progress:
        _progress(len(images), len(images), "done")
        sys.stderr.write("\n")
    if failed:
        print(f"{PROG}: {failed} of {len(images)} image(s) failed", file=sys.stderr)
    return 1 if failed else 0


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


def _server_error(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return f"HTTP {exc.code} {body['error']}: {body['detail']}"
    except Exception:
        return f"HTTP {exc.code} {exc.reason}"


def _progress(done: int, total: int, name: str) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r\033[K[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name}")
    sys.stderr.flush()


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
    return parser


if __name__ == "__main__":
    sys.exit(main())
