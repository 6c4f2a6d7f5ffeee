"""segserve-weights: write and inspect weights files.

    segserve-weights init   [--arch A] [--seed N] OUT.pth   untrained, seeded (offline labs, tests)
    segserve-weights export [--arch A] [--from-file F] OUT.pth   torchvision's pretrained weights
    segserve-weights export-onnx [--input-size N] [--threshold F] [--force] [--if-changed]
                                 IN.pth OUT.onnx      convert for SEGSERVE_BACKEND=onnxruntime
    segserve-weights choose-backend --workers N --threads T [--input-size N] [--threshold F]
                                 IN.onnx OUT.json   time the backends on this host (no torch)
    segserve-weights info   [--json] FILE             a weights file or an ONNX artifact

init, export and export-onnx print only the written file's sha256 (64 hex digits) on stdout, so that
`SHA=$(segserve-weights init w.pth)` captures it; what was written is told on stderr.
Errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from segserve.config import BACKEND, INPUT_SIZE
from segserve.gate import DEFAULT_MAX_FLIP_SHARE, GATE_VERSION
from segserve.models import ARCHS, DEFAULT_ARCH

# The share of each image's pixels that must keep their class (segserve.gate).
DEFAULT_THRESHOLD = 1.0 - DEFAULT_MAX_FLIP_SHARE

PROG = "segserve-weights"


def _int_between(low: int, high: int):
    """An argparse type: an integer in [low, high], else a usage error naming the bounds."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {number}")
        return number

    return parse


def _share(text: str) -> float:
    """An argparse type: a share of pixels, above 0 and at most 1."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {number}")
    return number


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # One line, no traceback: these run in playbooks and shell scripts.
        text = str(exc).strip().splitlines()
        print(f"{PROG}: error: {text[0] if text else type(exc).__name__}", file=sys.stderr)
        return 1


def _init(args: argparse.Namespace) -> int:
    from segserve import weights

    payload = weights.init_payload(args.arch, args.seed, varied_masks=args.varied_masks)
    sha = weights.save(payload, args.out)
    print(
        f"wrote {args.out}: {args.arch}, UNTRAINED (seeded init, seed={args.seed}): "
        "its masks are meaningless, for tests and offline labs only",
        file=sys.stderr,
    )
    print(sha)
    return 0


def _export(args: argparse.Namespace) -> int:
    from segserve import weights

    payload = weights.pretrained_payload(args.arch, args.from_file)
    sha = weights.save(payload, args.out)
    print(f"wrote {args.out}: {args.arch}, pretrained ({payload['source']})", file=sys.stderr)
    print(sha)
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    if args.if_changed and _onnx_is_current(args):
        return 0
    import torch

    from segserve import convert, weights

    source = weights.load(args.weights, expected_sha256=args.sha256)
    torch.set_num_threads(args.threads)
    sha, figures, meta = convert.export_onnx(
        source,
        args.out,
        input_size=args.input_size,
        threshold=args.threshold,
        force=args.force,
        threads=args.threads,
    )
    print(figures.table(), file=sys.stderr)
    forced = meta["agreement_forced"] == "true"
    print(
        f"wrote {args.out}: {source.arch} from {args.weights} (sha256 {source.sha256}), "
        f"pixel agreement with eager float32 {figures.pixel_agreement:.4%} over "
        f"{len(figures.images)} images at input size {args.input_size}"
        + (f"; FORCED past the gate: {'; '.join(figures.failures())}" if forced else ""),
        file=sys.stderr,
    )
    if not source.pretrained:
        print(
            "note: untrained weights: agreement on their masks says little; see the decided "
            "pixels and the logit difference above",
            file=sys.stderr,
        )
    print(sha)
    return 0


def _onnx_is_current(args: argparse.Namespace) -> bool:
    """An existing artifact made from the same weights with the same settings, and not forced;
    if so, says so and prints the artifact's sha256. Decided without importing torch (most of
    a conversion's start-up), so a deploy that changes nothing stays quick: the weights file's
    digest stands for the file, since the artifact records the digest of the file it was
    checked against. Anything else (a missing or wrong weights file included) is left to the
    full path, which reports it."""
    import os

    from segserve.backends import ONNX_FORMAT, read_onnx_metadata
    from segserve.weights import file_sha256

    if not (os.path.isfile(args.out) and os.path.isfile(args.weights)):
        return False
    weights_sha = file_sha256(args.weights)
    if args.sha256 and weights_sha != args.sha256.lower():
        return False
    try:
        meta = read_onnx_metadata(args.out)
    except Exception:
        return False
    current = (
        meta.get("format") == ONNX_FORMAT
        and meta.get("source_weights_sha256") == weights_sha
        and meta.get("checked_input_size") == str(args.input_size)
        and meta.get("agreement_threshold") == str(args.threshold)
        and meta.get("gate") == GATE_VERSION
        and meta.get("agreement_forced") == "false"
        # Older artifacts lack these, and a host without torch needs them: its model's
        # description (model_from_artifact) and the gate's reference (segserve.choose).
        and "categories" in meta
        and "gate_reference" in meta
    )
    if current:
        print(f"{args.out} is up to date (converted from {weights_sha})", file=sys.stderr)
        print(file_sha256(args.out))
    return current


def _choose_backend(args: argparse.Namespace) -> int:
    from segserve import choose

    record, measured = choose.choose(
        args.onnx,
        args.out,
        workers=args.workers,
        threads=args.threads,
        input_size=args.input_size,
        threshold=args.threshold,
        rounds=args.rounds,
        images=args.images,
        expected_sha256=args.sha256,
    )
    chosen = record["chosen"]
    print(
        f"{args.out} {'written' if measured else 'is up to date'}: chose "
        f"{choose.summary_line(record)}, {chosen['median_images_per_s']} images/s with "
        f"{args.workers} workers x {args.threads} threads, {chosen['vs_baseline']}x "
        f"{record['baseline']}",
        file=sys.stderr,
    )
    print(choose.summary_line(record))
    return 0


def _info(args: argparse.Namespace) -> int:
    from segserve import weights

    if args.file.endswith(".onnx"):
        return _onnx_info(args)
    meta = weights.load(args.file).metadata()
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    for key in ("path", "format", "arch", "num_classes", "pretrained", "source", "seed"):
        print(f"{key}: {meta[key]}")
    print(f"categories: {', '.join(meta['categories'])}")
    if not meta["pretrained"]:
        print("WARNING: untrained weights: masks are meaningless")
    print(f"sha256: {meta['sha256']}")
    return 0


def _onnx_info(args: argparse.Namespace) -> int:
    import os

    from segserve.backends import ONNX_FORMAT, equivalence_summary, read_onnx_metadata
    from segserve.weights import WeightsError, file_sha256

    if not os.path.isfile(args.file):
        raise WeightsError(f"onnx artifact not found: {args.file}")
    meta = read_onnx_metadata(args.file)
    if meta.get("format") != ONNX_FORMAT:
        raise WeightsError(f"{args.file} is not a segserve onnx artifact")
    meta = {"path": args.file, **meta, "sha256": file_sha256(args.file)}
    # Bytes for the gate on hosts, not for reading: shown by size.
    if "gate_reference" in meta:
        meta["gate_reference"] = f"{len(meta['gate_reference']) * 3 // 4} bytes"
    if args.json:
        meta["equivalence_images"] = json.loads(meta.get("equivalence_images", "[]"))
        print(json.dumps(meta, indent=2))
        return 0
    summary = equivalence_summary(meta)
    keys = ("path", "format", "arch", "precision", "source_weights_sha256", "input_size_policy")
    for key in keys:
        print(f"{key}: {meta.get(key)}")
    print(
        f"equivalence: pixel agreement {summary['pixel_agreement']:.4%} (worst image "
        f"{summary['min_image_agreement']:.4%}), max |logit diff| "
        f"{summary['max_abs_logit_diff']:.3g}, {len(summary['images'])} images, threshold "
        f"{summary['threshold']}" + (", FORCED" if summary["forced"] else "")
    )
    print(f"sha256: {meta['sha256']}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write and inspect segserve weights files.",
        epilog="init, export and export-onnx print the sha256 of the written file on stdout "
        "(just the hex).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    arch_help = f"network ({', '.join(ARCHS)}; default {DEFAULT_ARCH})"

    p = sub.add_parser("init", help="write an untrained, seeded initialisation")
    p.add_argument("--arch", choices=sorted(ARCHS), default=DEFAULT_ARCH, help=arch_help)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--varied-masks",
        action="store_true",
        help="a TEST DEVICE: rescale the classifier so masks hold many classes (still "
        "untrained; for checking conversions, see README)",
    )
    p.add_argument("out", help="the file to write")
    p.set_defaults(func=_init)

    p = sub.add_parser("export", help="write torchvision's pretrained weights (VOC labels)")
    p.add_argument("--arch", choices=sorted(ARCHS), default=DEFAULT_ARCH, help=arch_help)
    p.add_argument(
        "--from-file",
        metavar="PTH",
        help="torchvision's published .pth file, fetched beforehand (no network needed)",
    )
    p.add_argument("out", help="the file to write")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "export-onnx",
        help=f"convert a weights file to ONNX for {BACKEND.env}=onnxruntime, checking that "
        "its masks agree with eager PyTorch",
    )
    p.add_argument(
        "--input-size",
        type=_int_between(INPUT_SIZE.low, INPUT_SIZE.high),
        default=520,
        help="short side for the check (default 520)",
    )
    p.add_argument(
        "--threshold",
        type=_share,
        default=DEFAULT_THRESHOLD,
        help="least share of each image's pixels whose class agrees with eager float32; "
        "besides, every pixel whose margin is above float32's rounding bound must agree "
        f"(see the agreement gate in the README; default {DEFAULT_THRESHOLD})",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write the artifact even when it fails the gate (recorded in it, warned at start)",
    )
    p.add_argument(
        "--if-changed",
        action="store_true",
        help="do nothing when OUT already holds a passing conversion of these weights with "
        "these settings (prints 'up to date' on stderr)",
    )
    p.add_argument("--sha256", help="expected sha256 of IN.pth; a mismatch converts nothing")
    p.add_argument(
        "--threads",
        type=_int_between(1, 256),
        default=1,
        help="threads for the check (default 1)",
    )
    p.add_argument("weights", metavar="IN.pth", help="a segserve weights file")
    p.add_argument("out", metavar="OUT.onnx", help="the artifact to write")
    p.set_defaults(func=_export_onnx)

    p = sub.add_parser(
        "choose-backend",
        help="time every backend that passes the agreement gate on this host, with its worker "
        "layout, and record the fastest (prints 'BACKEND PRECISION')",
    )
    p.add_argument(
        "--workers",
        type=_int_between(1, 1024),
        required=True,
        help="uWSGI workers the service runs",
    )
    p.add_argument(
        "--threads", type=_int_between(1, 256), required=True, help="inference threads per worker"
    )
    p.add_argument(
        "--input-size",
        type=_int_between(INPUT_SIZE.low, INPUT_SIZE.high),
        default=520,
        help="short side, as the service runs (default 520)",
    )
    p.add_argument(
        "--threshold",
        type=_share,
        default=DEFAULT_THRESHOLD,
        help=f"the gate's least share of each image's pixels (default {DEFAULT_THRESHOLD})",
    )
    p.add_argument(
        "--rounds",
        type=_int_between(1, 100),
        default=3,
        help="timing rounds per candidate, interleaved (default 3)",
    )
    p.add_argument(
        "--images",
        type=_int_between(1, 1000),
        default=8,
        help="images per worker per round (default 8)",
    )
    p.add_argument("--sha256", help="expected sha256 of the weights IN.onnx was converted from")
    p.add_argument("onnx", metavar="IN.onnx", help="the artifact the service loads (export-onnx)")
    p.add_argument("out", metavar="OUT.json", help="the record; reused when still valid")
    p.set_defaults(func=_choose_backend)

    p = sub.add_parser("info", help="print a weights file's or an onnx artifact's metadata")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("file")
    p.set_defaults(func=_info)
    return parser


if __name__ == "__main__":
    sys.exit(main())
