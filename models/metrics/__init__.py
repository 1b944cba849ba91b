"""GAN evaluation: FID, KID, precision/recall, density/coverage, MS-SSIM (registry); SinGAN's SIFID in sifid.py."""

# Importing the metric modules registers them (@register_metric).
from models.metrics import diversity, fid, kid, prdc  # noqa: F401
from models.metrics.evaluate import EvalResult, evaluate_images, primary_metric_name
from models.metrics.inception import InceptionWeightsError
from models.metrics.registry import METRICS, register_metric

__all__ = ["EvalResult", "evaluate_images", "primary_metric_name", "InceptionWeightsError", "METRICS",
           "register_metric"]
