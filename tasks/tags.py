"""The names this project writes into MLflow: run tags, version tags, aliases, statuses and artifact folders."""

import re

# ---- run tags (besides MLflow's own mlflow.source.git.commit) ----------------------------------------------
TAG_GIT_COMMIT = "git_commit"              # HEAD, with "-dirty" when tracked files have changes
TAG_MLFLOW_COMMIT = "mlflow.source.git.commit"
TAG_FINGERPRINT = "dataset_fingerprint"    # the data gate's fingerprint (also a version tag)
TAG_DATASET_SIZE = "dataset_size"
TAG_SPARK_MASTER = "spark_master"
TAG_WORKERS = "spark_workers"
TAG_PRESET = "preset"
TAG_ENGINE = "engine"                      # spark | local
TAG_CONFIG_HASH = "config_hash"            # tasks.runs.config_hash: the retrain check compares it
TAG_PIPELINE = "pipeline_status"           # RUNNING while the flow works on the run, COMPLETED after promotion
TAG_VERSION = "registered_version"         # the version the run was registered as
TAG_FLOW_RUN = "prefect_flow_run_id"
TAG_RETRAIN_REASON = "retrain_reason"
TAG_RESUMED_FROM = "resumed_from_step"
TAG_FAILURE = "failure"                    # why training stopped (divergence)
TAG_STOPPED_BY = "stopped_by"              # "max_minutes" when train.max_minutes ended training before train.steps
TAG_EXTRACTOR = "feature_extractor"        # the evaluation's feature extractor (also a version tag)

RUNNING, COMPLETED = "running", "completed"

# ---- version tags ------------------------------------------------------------------------------------------
TAG_RUN = "run_id"
TAG_FAMILY = "model_family"                # transsrgan | dcgan | singan: which loader and promotion policy
METRIC_TAG_PREFIX = "metric."              # `metric.fid` = "12.3"
TAG_DECISION = "promotion.decision"        # champion | challenger: the claim, written before the alias moves
TAG_REASON = "promotion.reason"
TAG_COMPARED = "promotion.compared_with"   # the champion version it was measured against
TAG_TIME = "promotion.time"
# SinGAN: one image per version (also run tags)
TAG_IMAGE = "image"                        # the image's slug (tasks.registry.image_slug)
TAG_IMAGE_SOURCE = "image_source"          # what the user passed: a path or skimage:NAME
TAG_IMAGE_FINGERPRINT = "image_fingerprint"   # sha256 of the validated image file
TAG_EVAL_SIZE = "eval_size"                # "HxW": the size SIFID was measured at (the finest scale)


def image_slug(name: str) -> str:
    """The `image` tag, usable in an MLflow alias ([a-z0-9_-], at most 64 characters): lower-case, runs of other
    characters become '-'. `hubble_deep_field` -> `hubble_deep_field`, `My Photo (2).JPG` -> `my-photo-2-jpg`."""
    slug = re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")[:64].strip("-")
    return slug or "image"


def verdict_tag(version: str, what: str) -> str:
    """`promotion.v<N>.decision` / `.reason`: written on a champion when version N was measured against it."""
    return f"promotion.v{version}.{what}"


# ---- aliases -----------------------------------------------------------------------------------------------
CHAMPION, CHALLENGER = "champion", "challenger"

# ---- artifact folders and files of a run ------------------------------------------------------------------
CONFIG_ARTIFACT = "config.json"
SAMPLES_DIR = "samples"
SAMPLES_KEY = "samples"                    # mlflow.log_image key of the grids over training (images/ in the run)
CHECKPOINTS_DIR = "checkpoints"
VALIDATION_DIR = "validation"
