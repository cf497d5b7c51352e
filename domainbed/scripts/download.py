"""Download the DomainBed datasets: ``python -m domainbed.scripts.download --data_dir D``.

All the work is in :mod:`domainbed.data.download`; this file only parses flags and turns
failures into one ``error: ...`` line with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from domainbed.data import download

EPILOG = """\
mirror layout: every file (Google Drive ones too) is fetched from MIRROR/<Dataset>/<filename>,
e.g. MIRROR/PACS/PACS.zip, MIRROR/DomainNet/clipart.zip, MIRROR/MNIST/train-images-idx3-ubyte.gz;
--list prints them all. http(s):// and file:/// mirrors work. WILDS ignores the mirror.

by hand: save a file as DATA_DIR/.downloads/<Dataset>/<filename> and rerun (it is verified and
extracted), or lay the dataset out as the loaders read it, e.g. DATA_DIR/PACS/{art_painting,
cartoon,photo,sketch}/<class>/<image>. Interrupted downloads resume on the next run.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m domainbed.scripts.download", description="Download the DomainBed datasets.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="folder that receives the datasets")
    parser.add_argument("--datasets", nargs="+", default=list(download.DEFAULT_DATASETS),
                        metavar="NAME",
                        help=f"any of {' '.join(download.DATASET_NAMES)} (also ColoredMNIST, "
                             "RotatedMNIST); default: all but the WILDS ones")
    parser.add_argument("--mirror", metavar="URL", help="fetch every file from URL/<Dataset>/<filename>")
    parser.add_argument("--domainnet_duplicates", metavar="PATH_OR_URL",
                        help="DomainBed's domain_net_duplicates.txt (default: fetched from "
                             "DomainBed's GitHub, or the mirror); 'none' keeps the duplicates")
    parser.add_argument("--keep_archives", action="store_true",
                        help="keep the downloaded archives in DATA_DIR/.downloads")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="print every file and its URL, then exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list:
            print("\n".join(download.describe_files(args.mirror)))
            return 0
        if not args.data_dir:
            parser.error("--data_dir is required")
        sources = ({download.DOMAINNET_DUPLICATES: args.domainnet_duplicates}
                   if args.domainnet_duplicates else None)
        download.download_datasets(args.datasets, args.data_dir, mirror=args.mirror, sources=sources,
                                   keep_archives=args.keep_archives, progress=not args.no_progress)
    except (download.DownloadError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
