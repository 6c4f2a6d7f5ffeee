"""segserve-weights: write and inspect weights files.

    segserve-weights init   [--arch A] [--seed N] OUT.pth   untrained, seeded (offline labs, tests)
    segserve-weights export [--arch A] [--from-file F] OUT.pth   torchvision's pretrained weights
    segserve-weights info   [--json] FILE

init and export print only the file's sha256 (64 hex digits) on stdout, so that
`SHA=$(segserve-weights init w.pth)` captures it; what was written is told on stderr.
Errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from segserve.models import ARCHS, DEFAULT_ARCH

PROG = "segserve-weights"


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

    sha = weights.save(weights.init_payload(args.arch, args.seed), args.out)
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


def _info(args: argparse.Namespace) -> int:
    from segserve import weights

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write and inspect segserve weights files.",
        epilog="init and export print the sha256 of the written file on stdout (just the hex).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    arch_help = f"network ({', '.join(ARCHS)}; default {DEFAULT_ARCH})"

    p = sub.add_parser("init", help="write an untrained, seeded initialisation")
    p.add_argument("--arch", choices=sorted(ARCHS), default=DEFAULT_ARCH, help=arch_help)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
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

    p = sub.add_parser("info", help="print a weights file's metadata and sha256")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("file")
    p.set_defaults(func=_info)
    return parser


if __name__ == "__main__":
    sys.exit(main())
