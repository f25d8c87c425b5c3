#!/usr/bin/env python
"""Download PASCAL VOC / COCO 2017 with checksums: ``python tools/download_data.py voc2007 voc2012 [--root data]``
into ``<root>/VOCdevkit/VOC{2007,2012}`` and ``<root>/coco`` (19 GB); verified archives are not fetched again."""
import argparse
import sys

from detector.data.download import RESOURCES, download_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", choices=sorted(RESOURCES), help="datasets to download")
    parser.add_argument("--root", default="data", help="data folder (default: data)")
    parser.add_argument("--remove-archives", action="store_true", help="delete each archive after extraction")
    args = parser.parse_args(argv)
    for name in args.datasets:
        print(f"{name}: ready in {download_dataset(name, args.root, args.remove_archives)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
