"""`transsrgan sample --model URI -n N --out FILE.png`: an image grid from a registry model; same seed, same images.

Works for TransSRGAN generators and for SinGAN models (models:/singan@champion), which also take any output size.
"""

import argparse


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return n


def _positive_float(value: str) -> float:
    x = float(value)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return x


SINGAN_ONLY = ("scale_h", "scale_w", "height", "width")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write an image grid from a registered generator",
                       description="Load a generator from MLflow (models:/transsrgan@champion, models:/transsrgan/3, "
                                   "runs:/<run id>/generator) or a SinGAN (models:/singan@champion) and write N samples as "
                                   "one grid PNG. The same --seed gives the same images.")
    p.add_argument("--model", required=True, metavar="URI",
                   help="MLflow model URI, e.g. models:/transsrgan@champion or models:/singan@champion")
    p.add_argument("-n", type=_positive, default=64, metavar="N", help="number of images (default 64)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="grid PNG to write")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="noise seed (default 0)")
    p.add_argument("--each", metavar="DIR", help="also write every image as DIR/sample_0000.png, ...")
    p.add_argument("--scale", type=_positive, default=2, metavar="K", help="upscale the grid K times (default 2)")
    size = p.add_argument_group("SinGAN only: any output size (default: the training image's size)")
    size.add_argument("--scale-h", type=_positive_float, metavar="X", help="height x X (resizes the whole pyramid)")
    size.add_argument("--scale-w", type=_positive_float, metavar="X", help="width x X, e.g. 2 for a panorama")
    size.add_argument("--height", type=_positive, metavar="PX", help="exact height in pixels")
    size.add_argument("--width", type=_positive, metavar="PX", help="exact width in pixels (with --height alone, "
                                                                   "the aspect ratio is kept)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store (default $MLFLOW_TRACKING_URI, else the embedded SQLite store)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.out.lower().endswith(".png"):
        from flows.errors import UsageError

        raise UsageError(f"--out {args.out!r}: expected a .png file")
    from flows.errors import UsageError
    from tasks.model_io import ModelNotFoundError, write_samples
    from tasks.singan_io import is_singan_uri, write_singan_samples
    from tasks.tracking import configure_tracking

    store = configure_tracking(args.tracking_uri)
    sized = {k: getattr(args, k, None) for k in SINGAN_ONLY if getattr(args, k, None) is not None}
    if sized and (args.scale_h or args.scale_w) and (args.height or args.width):
        raise UsageError("--height/--width and --scale-h/--scale-w: expected one way to set the size, got both")
    try:
        if is_singan_uri(args.model):
            grid, each, (h, w) = write_singan_samples(
                args.model, args.n, args.out, seed=args.seed, each_dir=args.each, scale=args.scale,
                scale_h=args.scale_h or 1.0, scale_w=args.scale_w or 1.0, height=args.height, width=args.width)
            size = f" of {h}x{w}"
        else:
            if sized:
                flags = ", ".join("--" + k.replace("_", "-") for k in sized)
                raise UsageError(f"{flags}: only for SinGAN models; {args.model} is a fixed-size generator")
            grid, each = write_samples(args.model, args.n, args.out, seed=args.seed, each_dir=args.each,
                                       scale=args.scale)
            size = ""
    except ModelNotFoundError as exc:
        raise UsageError(f"--model: {exc}") from exc
    print(f"wrote {args.n} samples{size} from {args.model} (store {store}) to {grid}"
          + (f"; single images in {each}" if each else ""))
    return 0
