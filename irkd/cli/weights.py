"""``irkd weights convert``: convert weights between frameworks, checked strictly."""

from __future__ import annotations

import argparse
import os

from irkd.cli.common import EXIT_OK

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``weights`` and its action ``convert`` to the subcommands."""
    weights = sub.add_parser("weights", help="convert weights between frameworks")
    wsub = weights.add_subparsers(dest="weights_command", metavar="ACTION")
    wsub.required = True
    conv = wsub.add_parser(
        "convert",
        help="convert .pt/.pth <-> .safetensors (neutral) <-> .ckpt, checked strictly",
    )
    conv.add_argument("src", help="source weights (.pt, .pth, .ckpt or .safetensors)")
    conv.add_argument("dst", help="destination (format chosen by suffix)")
    conv.add_argument("--network", required=True, help="registered network (irkd models)")
    conv.add_argument(
        "--deep-supervision", action="store_true", help="the network has deep-supervision heads"
    )
    conv.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    conv.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``irkd weights convert``; returns the exit status."""
    from irkd.zoo import check_network

    check_network(args.network, key="--network")
    if os.path.lexists(args.dst) and not args.overwrite:
        raise FileExistsError(f"{args.dst} exists: pass --overwrite to replace it")
    from parity.weights import convert

    kwargs = {"deep_supervision": True} if args.deep_supervision else None
    rep = convert(args.src, args.dst, network=args.network, model_kwargs=kwargs)
    print(f"wrote {rep.dst}: {rep.tensors} tensors, sha256 {rep.sha256}")
    if rep.dropped:
        shown = ", ".join(rep.dropped[:5]) + (" ..." if len(rep.dropped) > 5 else "")
        print(f"dropped {len(rep.dropped)} non-network entries: {shown}")
    return EXIT_OK
