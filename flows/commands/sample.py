"""`transsrgan sample --model URI -n N --out FILE.png`: an image grid from a registry model; same seed, same images.

Works for TransSRGAN generators and for SinGAN models (models:/singan@champion), which also take any output size.
Generators also take --truncation PSI and --interpolate (a slerp grid between seed pairs; models.grid).
"""

import argparse
from pathlib import Path

from flows.cli import seed, tracking_uri
from models.paths import user_path


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return n


def _at_least_two(value: str) -> int:
    n = _positive(value)
    if n < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2 (the two end points), got {value}")
    return n


def _truncation(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value!r}") from None
    if not 0 < x <= 1:                        # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] (1 = off), got {value}")
    return x


def _positive_float(value: str) -> float:
    x = float(value)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return x


SINGAN_ONLY = ("scale_h", "scale_w", "height", "width")
DEFAULT_N, DEFAULT_ROWS, DEFAULT_STEPS = 64, 8, 8     # -n without --interpolate; rows and steps with it
# The names its outputs carry in a folder's ledger (models.files.OutputFolder): the single images' (what
# tasks.model_io.write_samples records), and the grid's, kept apart so that retiring stale single images in a folder
# never touches a grid written there too.
COMMAND, GRID = "sample", "sample --out"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write an image grid from a registered generator",
                       description="Load a generator from MLflow (models:/transsrgan@champion, models:/transsrgan/3, "
                                   "runs:/<run id>/generator) or a SinGAN (models:/singan@champion) and write N samples as "
                                   "one grid PNG. The same --seed gives the same images.")
    p.add_argument("--model", required=True, metavar="URI",
                   help="MLflow model URI, e.g. models:/transsrgan@champion or models:/singan@champion")
    p.add_argument("-n", type=_positive, metavar="N",
                   help="number of images (default 64); with --interpolate, rows of the grid (default 8)")
    p.add_argument("--out", required=True, metavar="FILE.png",
                   help="grid PNG to write; missing parent folders are created; an existing FILE is replaced only "
                        "when it is an earlier grid of this command, unchanged since (its folder's "
                        ".transsrgan-outputs.json); anything else stops the command with exit 2")
    p.add_argument("--seed", type=seed, default=0, metavar="S", help="noise seed (default 0)")
    p.add_argument("--each", metavar="DIR", help="also write every image as DIR/sample_0000.png, ... (created if "
                                                 "missing); a rerun replaces only the samples an earlier run wrote "
                                                 "(DIR/.transsrgan-outputs.json), a file of those names that "
                                                 "transsrgan did not write stops the command (exit 2)")
    p.add_argument("--scale", type=_positive, default=2, metavar="K", help="upscale the grid K times (default 2)")
    latent = p.add_argument_group("generators only: the Gaussian latent z")
    latent.add_argument("--truncation", type=_truncation, default=1.0, metavar="PSI",
                        help="truncation trick, PSI in (0, 1] (default 1 = off): every z is scaled toward the mean "
                             "latent, z' = PSI z (the mean of N(0, I) is 0); smaller PSI gives more typical, less "
                             "varied images")
    latent.add_argument("--interpolate", action="store_true",
                        help="write a latent-interpolation grid instead: row i walks by slerp from the z of seed "
                             "S+2i to the z of seed S+2i+1 (S = --seed), so its first and last images are "
                             "`sample -n 1 --seed S+2i` and `--seed S+2i+1`")
    latent.add_argument("--interpolate-steps", type=_at_least_two, metavar="N",
                        help="images per row of --interpolate, end points included (default 8)")
    size = p.add_argument_group("SinGAN only: any output size (default: the training image's size)")
    size.add_argument("--scale-h", type=_positive_float, metavar="X", help="height x X (resizes the whole pyramid)")
    size.add_argument("--scale-w", type=_positive_float, metavar="X", help="width x X, e.g. 2 for a panorama")
    size.add_argument("--height", type=_positive, metavar="PX", help="exact height in pixels")
    size.add_argument("--width", type=_positive, metavar="PX", help="exact width in pixels (with --height alone, "
                                                                   "the aspect ratio is kept)")
    p.add_argument("--tracking-uri", metavar="URI", type=tracking_uri,
                   help="MLflow store (default $MLFLOW_TRACKING_URI, else the embedded SQLite store)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.commands.outputs import check_report
    from flows.errors import UsageError

    if not args.out.lower().endswith(".png"):
        raise UsageError(f"--out {args.out!r}: expected a .png file")
    if args.interpolate_steps is not None and not args.interpolate:
        raise UsageError("--interpolate-steps: only with --interpolate")
    steps = (args.interpolate_steps or DEFAULT_STEPS) if args.interpolate else 0
    args.n = args.n or (DEFAULT_ROWS if steps else DEFAULT_N)
    out = user_path(args.out).absolute()
    check_report(str(out), "--out", GRID)         # refuse a user's file before loading a model
    if args.each is not None:
        from flows.commands.outputs import check_folder

        check_folder(args.each, [f"sample_{i:04d}.png" for i in range(args.n * max(steps, 1))], "--each", COMMAND)
    sized = {k: getattr(args, k, None) for k in SINGAN_ONLY if getattr(args, k, None) is not None}
    if sized and (args.scale_h or args.scale_w) and (args.height or args.width):
        raise UsageError("--height/--width and --scale-h/--scale-w: expected one way to set the size, got both")
    return _sample(args, out, sized, steps)


def _sample(args: argparse.Namespace, out: Path, sized: dict, steps: int) -> int:
    from flows.errors import UsageError
    from models.files import ForeignFileError, OutputFolder
    from models.singan import SinGANState
    from tasks.model_io import ModelNotFoundError, load_model, write_samples
    from tasks.tracking import configure_tracking

    store = configure_tracking(args.tracking_uri)
    try:
        model = load_model(args.model)
    except ModelNotFoundError as exc:
        raise UsageError(f"--model: {exc}") from exc
    singan = isinstance(model, SinGANState)
    if sized and not singan:
        flags = ", ".join("--" + k.replace("_", "-") for k in sized)
        raise UsageError(f"{flags}: only for SinGAN models; {args.model} is a fixed-size generator")
    latent = {"truncation": args.truncation} if args.truncation != 1.0 else {}
    if steps:
        latent["interpolate_steps"] = steps
    if latent and singan:
        flags = ", ".join("--" + ("interpolate" if k == "interpolate_steps" else k) for k in latent)
        raise UsageError(f"{flags}: only for generators with a Gaussian latent; {args.model} is a SinGAN")
    try:
        with OutputFolder(out.parent, GRID, replace=False) as folder:   # the grid joins the folder's ledger
            grid, each, (h, w) = write_samples(model, args.n, folder.claim(out.name), seed=args.seed,
                                               each_dir=args.each, scale=args.scale, **sized, **latent)
    except ForeignFileError as exc:   # appeared since the check above
        raise UsageError(f"--out: {exc}") from None
    except OSError as exc:            # a read-only folder, a full disk: nothing half-written is left (models.files)
        raise UsageError(f"--out {out}: cannot write ({exc.strerror or exc})") from exc
    size = f" of {h}x{w}" if singan else ""
    what = (f"an interpolation grid of {args.n} seed pairs x {steps} steps" if steps else f"{args.n} samples{size}")
    trunc = f" at truncation {args.truncation:g}" if args.truncation != 1.0 else ""
    print(f"wrote {what}{trunc} from {args.model} (store {store}) to {grid}"
          + (f"; single images in {each}" if each else ""))
    return 0
