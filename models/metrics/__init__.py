"""GAN evaluation: FID, KID, PRDC, MS-SSIM, the digits domain's metrics (registry), floors; SIFID in sifid.py."""

# Importing the metric modules registers them (@register_metric) and the digits domain (register_domain).
from models.metrics import digits, diversity, fid, kid, prdc  # noqa: F401
from models.metrics.evaluate import EvalResult, evaluate_images, primary_metric_name
from models.metrics.inception import InceptionWeightsError
from models.metrics.registry import DOMAINS, METRICS, register_domain, register_metric

__all__ = ["EvalResult", "evaluate_images", "primary_metric_name", "InceptionWeightsError", "METRICS",
           "register_metric", "DOMAINS", "register_domain"]
