#!/usr/bin/env python
"""Download PASCAL VOC / COCO 2017 with checksums: ``python tools/download_data.py voc2007 voc2012
[--root data]`` into ``<root>/VOCdevkit/VOC{2007,2012}`` and ``<root>/coco`` (19 GB); verified
archives are not fetched again. A dataset folder that is there is not extracted over (its files
would be replaced by the archive's) without --overwrite."""

import sys
from pathlib import Path
from urllib.error import URLError

from torchvision.datasets.utils import download_and_extract_archive

from detector.config import tool_parser
from detector.errors import DetectorError, UsageError, run_tool

VOC_BASE = "https://thor.robots.ox.ac.uk/pascal/VOC"  # the mirror torchvision uses
COCO_BASE = "http://images.cocodataset.org"
# torchvision's download_and_extract_archive checks each MD5; name -> (sub-folder of root, the
# folders its archives extract to, [(url, md5), ...])
RESOURCES: dict[str, tuple[str, list[str], list[tuple[str, str]]]] = {
    "voc2007": (
        "",
        ["VOCdevkit/VOC2007"],
        [
            (f"{VOC_BASE}/voc2007/VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64"),
            (f"{VOC_BASE}/voc2007/VOCtest_06-Nov-2007.tar", "b6e924de25625d8de591ea690078ad9f"),
        ],
    ),
    "voc2012": (
        "",
        ["VOCdevkit/VOC2012"],
        [(f"{VOC_BASE}/voc2012/VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd")],
    ),
    "coco2017": (
        "coco",
        ["annotations", "val2017", "train2017"],
        [
            (
                f"{COCO_BASE}/annotations/annotations_trainval2017.zip",
                "f4bbac642086de4f52a3fdda2de5fa2c",
            ),
            (f"{COCO_BASE}/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
            (f"{COCO_BASE}/zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"),
        ],
    ),
}


@run_tool
def main(argv=None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument(
        "datasets", nargs="+", choices=sorted(RESOURCES), help="datasets to download"
    )
    parser.add_argument("--root", default="data", help="data folder (default: data)")
    parser.add_argument(
        "--remove-archives", action="store_true", help="delete each archive after extraction"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="extract over a dataset folder that is there"
    )
    args = parser.parse_args(argv)
    for name in args.datasets:
        sub, folders, _ = RESOURCES[name]
        dataset = Path(args.root) / sub
        there = [str(dataset / folder) for folder in folders if (dataset / folder).exists()]
        if there and not args.overwrite:
            raise UsageError(
                f"{name}: {' and '.join(there)} is there, and extracting would replace its files "
                f"with the archive's; pass another --root, or --overwrite to extract again"
            )
    for name in args.datasets:
        sub, _, archives = RESOURCES[name]
        target = Path(args.root) / sub  # sub "" is root itself
        target.mkdir(parents=True, exist_ok=True)
        for url, md5 in archives:
            try:
                download_and_extract_archive(
                    url, download_root=str(target), md5=md5, remove_finished=args.remove_archives
                )
            # no network; torchvision's "File not found or corrupted."
            except (URLError, RuntimeError) as exc:
                raise DetectorError(
                    f"{url}: download failed ({exc}); check the network, or put the archive in "
                    f"{target} by hand and run the command again"
                ) from None
        print(f"{name}: ready in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
