"""`transsrgan sample --model URI -n N --out FILE.png`: an image grid from a registry model; same seed, same images."""

import argparse


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write an image grid from a registered generator",
                       description="Load a generator from MLflow (models:/transsrgan@champion, models:/transsrgan/3, "
                                   "runs:/<run id>/generator) and write N samples as one grid PNG. The same "
                                   "--seed gives the same images.")
    p.add_argument("--model", required=True, metavar="URI",
                   help="MLflow model URI, e.g. models:/transsrgan@champion")
    p.add_argument("-n", type=_positive, default=64, metavar="N", help="number of images (default 64)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="grid PNG to write")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="noise seed (default 0)")
    p.add_argument("--each", metavar="DIR", help="also write every image as DIR/sample_0000.png, ...")
    p.add_argument("--scale", type=_positive, default=2, metavar="K", help="upscale the grid K times (default 2)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store (default $MLFLOW_TRACKING_URI, else the embedded SQLite store)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.out.lower().endswith(".png"):
        from flows.errors import UsageError

        raise UsageError(f"--out {args.out!r}: expected a .png file")
    from tasks.model_io import ModelNotFoundError, write_samples
    from tasks.tracking import configure_tracking

    store = configure_tracking(args.tracking_uri)
    try:
        grid, each = write_samples(args.model, args.n, args.out, seed=args.seed, each_dir=args.each,
                                   scale=args.scale)
    except ModelNotFoundError as exc:
        from flows.errors import UsageError

        raise UsageError(f"--model: {exc}") from exc
    print(f"wrote {args.n} samples from {args.model} (store {store}) to {grid}"
          + (f"; single images in {each}" if each else ""))
    return 0
