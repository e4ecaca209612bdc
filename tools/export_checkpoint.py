#!/usr/bin/env python
"""Export a training checkpoint as weights only, in float16, for shipping.

Usage: python tools/export_checkpoint.py TRAINED.pth OUT.pth [--float32]

Drops the optimizer, scheduler and iteration; floating-point weights become float16 (they are
cast back to the model's float32 on loading). Refuses to overwrite OUT unless --overwrite.
"""
import argparse
import os
import sys

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--float32", action="store_true", help="keep float32 weights")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if not os.path.isfile(args.source):
        sys.exit(f"no checkpoint at {args.source}")
    if os.path.exists(args.target) and not args.overwrite:
        sys.exit(f"{args.target} exists; pass --overwrite to replace it")
    checkpoint = torch.load(args.source, map_location="cpu", weights_only=False)
    weights = checkpoint.get("model", checkpoint)
    if not args.float32:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.target)), exist_ok=True)
    torch.save({"model": weights}, args.target)
    print(f"{args.target}: {len(weights)} tensors, {os.path.getsize(args.target) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
