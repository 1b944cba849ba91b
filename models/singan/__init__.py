"""SinGAN (Shaham, Dekel, Michaeli, ICCV 2019): a pyramid of patch GANs learnt from one image."""

from collections.abc import Callable

from models.singan.checkpoint import load_singan, save_singan
from models.singan.config import DEFAULT_IMAGE, PRESETS, SinGANConfig, resolve_singan_config
from models.singan.evaluation import diversity, frechet_distance, sifid, sifid_scores
from models.singan.image import image_name, load_image
from models.singan.pyramid import scale_sizes
from models.singan.sampling import reconstruct, sample, sample_at_size
from models.singan.state import SinGANState, init_state
from models.singan.trainer import METRIC_NAMES, Callback, train_singan

__all__ = ["DEFAULT_IMAGE", "METRIC_NAMES", "PRESETS", "SinGANConfig", "SinGANState", "diversity",
           "fit", "frechet_distance", "image_name", "init_state", "load_image", "load_singan", "reconstruct",
           "resolve_singan_config", "sample", "sample_at_size", "save_singan", "scale_sizes", "sifid",
           "sifid_scores", "train_singan"]


def fit(cfg: SinGANConfig, *, on_log: Callback | None = None, on_scale_end: Callback | None = None,
        should_stop: Callable[[], bool] | None = None,
        print_fn: Callable[[str], None] | None = print) -> SinGANState:
    """Load cfg.image, build the pyramid and train every scale: the one call a task needs."""
    state = init_state(load_image(cfg.image, cfg.channels), cfg.validate())
    if print_fn:
        print_fn(f"SinGAN on {cfg.image}: {state.num_scales} scales, "
                 f"{' -> '.join(f'{h}x{w}' for h, w in state.sizes)}")
    return train_singan(state, on_log=on_log, on_scale_end=on_scale_end, should_stop=should_stop,
                        print_fn=print_fn)
