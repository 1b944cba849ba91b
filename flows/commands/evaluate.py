"""`transsrgan evaluate (--model URI | --fake PATH) --real PATH`: the metric table (FID, KID, PRDC, MS-SSIM)."""

import argparse
import json
import sys

from flows.cli import seed, tracking_uri
from flows.commands.outputs import REFUSAL, check_report, write_report


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {value}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    from models.config import EvalConfig

    p = sub.add_parser("evaluate", help="FID, KID, precision/recall, density/coverage and MS-SSIM diversity",
                       description="Compare generated images (a registered model or a folder) with real images on "
                                   "pytorch-fid's InceptionV3 features. Needs the standard weights file "
                                   "pt_inception-2015-12-05-6726825d.pth (see --inception-weights), or "
                                   "--allow-random-features, which renames every Inception-based metric "
                                   "(fd_inception_random, ...).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="URI", help="MLflow model URI, e.g. models:/transsrgan@champion")
    src.add_argument("--fake", metavar="PATH",
                     help="folder of generated images (png/jpg/jpeg/webp, recursive) or a gate's manifest.parquet; "
                          "files the data gate would quarantine as unreadable (links, pipes, undecodable, animated, "
                          "larger than data.max_pixels, other formats or modes) are skipped and counted on stderr")
    p.add_argument("--real", required=True, metavar="PATH",
                   help="'digits', an image folder (read like --fake) or a manifest.parquet (read as is)")
    p.add_argument("--n", type=_positive, default=EvalConfig.model_fields["n_samples"].default, metavar="N",
                   help=f"eval.n_samples: images per side (default {EvalConfig.model_fields['n_samples'].default})")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON, with every skipped input file "
                                                  f"and its reason; {REFUSAL}")
    p.add_argument("--allow-random-features", action="store_true",
                   help="eval.allow_random_features: without the weights file, use seeded random InceptionV3 "
                        "weights; metrics are renamed (fd_inception_random, ...) and are NOT FID")
    p.add_argument("--inception-weights", metavar="FILE",
                   help="eval.inception_weights: path to pt_inception-2015-12-05-6726825d.pth "
                        "(else $TRANSSRGAN_INCEPTION_WEIGHTS, else the torch hub cache)")
    p.add_argument("--batch-size", type=_positive, metavar="B", help="eval.batch_size: images per Inception pass")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="eval.device (default cpu)")
    p.add_argument("--seed", type=seed, default=0, metavar="S", help="noise seed for --model (default 0)")
    p.add_argument("--tracking-uri", metavar="URI", type=tracking_uri,
                   help="MLflow store for --model (default $MLFLOW_TRACKING_URI, else the embedded SQLite store)")
    p.set_defaults(func=run)


def _eval_config(args: argparse.Namespace):
    from models.config import EvalConfig

    cfg = EvalConfig(n_samples=args.n, allow_random_features=args.allow_random_features,
                     inception_weights=args.inception_weights or "")
    if args.batch_size:
        cfg.batch_size = args.batch_size
    if args.device:
        cfg.device = args.device
    return cfg


def _evaluate_model(args: argparse.Namespace, cfg, on_read):
    from flows.errors import UsageError

    try:
        from tasks.model_io import ModelNotFoundError, load_generator
        from tasks.tracking import configure_tracking
    except ImportError as exc:
        raise UsageError(f"--model: loading models from MLflow is not available ({exc}); use --fake PATH") from exc
    from tasks.evaluate import evaluate_generator

    configure_tracking(args.tracking_uri)
    try:
        G = load_generator(args.model)
    except ModelNotFoundError as exc:
        raise UsageError(f"--model: {exc}") from exc
    model_cfg = G.config.model
    return evaluate_generator(G, args.real, cfg, model_cfg, seed=args.seed, on_read=on_read)


def run(args: argparse.Namespace) -> int:
    from flows.errors import UsageError

    inputs: dict[str, dict] = {}

    def on_read(side: str, found) -> None:   # found: models.data.folder.FolderImages
        flag = f"--{side}"
        for line in found.summary():
            print(f"transsrgan evaluate: {flag} {found.root}: {line}", file=sys.stderr)
        inputs[side] = {"source": found.root, "entries": found.n_entries, "images": len(found.paths),
                        "unused": found.unused, "skipped": [{"path": p, "reason": r} for p, r in found.skipped]}

    cfg = _eval_config(args)
    check_report(args.json, "--json", "evaluate")     # refuse a user's file before the long part runs
    from models.metrics import InceptionWeightsError

    try:
        if args.model:
            result = _evaluate_model(args, cfg, on_read)
        else:
            from tasks.evaluate import evaluate_folder

            result = evaluate_folder(args.fake, args.real, cfg, on_read=on_read)
    except InceptionWeightsError as exc:
        raise UsageError(f"--inception-weights: {exc}") from exc
    except (FileNotFoundError, PermissionError, ValueError) as exc:   # a missing path, no manifest, too few images
        raise UsageError(str(exc)) from exc
    print(result.table())
    print(f"features: {result.feature_images_per_s:.1f} images/s"
          + (" (real side from cache)" if result.real_cache_hit else ""))
    if args.json:
        payload = {"metrics": result.metrics, "feature_extractor": result.extractor,
                   "standard_weights": result.standard_weights, "primary_metric": result.primary_metric_name,
                   "feature_images_per_s": result.feature_images_per_s, "n": cfg.n_samples,
                   "higher_is_better": result.higher_is_better, "inputs": inputs}
        print(f"wrote {write_report(args.json, json.dumps(payload, indent=2), '--json', 'evaluate')}")
    return 0
