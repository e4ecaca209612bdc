#!/usr/bin/env python
"""
Write the semantic-segmentation PNGs of a panoptic dataset (each pixel: the contiguous category of
its segment, 255 where void), so that "<dataset>_with_sem_seg" can be evaluated for mIoU, as
upstream Mask2Former does for COCO panoptic. PNGs already there are kept unless --overwrite.

Usage:
    python tools/prepare_panoptic_semantic.py coco_2017_val_panoptic
        # -> $DETECTRON2_DATASETS/coco/panoptic_semseg_val2017, read by coco_2017_val_panoptic_with_sem_seg
    python tools/prepare_panoptic_semantic.py DATASET --output DIR
"""
import argparse
import sys
import time

from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

from expedite_vit.data.panoptic_semantic import SUFFIX, prepare_panoptic_semantic


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("dataset", help="a registered panoptic dataset, e.g. coco_2017_val_panoptic")
    parser.add_argument("--output", help=f"PNG folder (default: the sem_seg_root of <dataset>{SUFFIX})")
    parser.add_argument("--overwrite", action="store_true", help="rewrite PNGs that exist")
    args = parser.parse_args(argv)
    logger = setup_logger(name="expedite_vit")

    output = args.output or MetadataCatalog.get(args.dataset + SUFFIX).get("sem_seg_root")
    if not output:
        parser.error(f"no dataset {args.dataset + SUFFIX!r} is registered to name a folder; give --output")
    start = time.perf_counter()
    try:
        written = prepare_panoptic_semantic(args.dataset, output, overwrite=args.overwrite)
    except (KeyError, ValueError, OSError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    logger.info(f"{len(written)} semantic PNGs written to {output} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
