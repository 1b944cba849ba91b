"""SinGAN (Shaham, Dekel, Michaeli, ICCV 2019): a pyramid of patch GANs learnt from one image."""

from models.config import DEFAULT_SINGAN_IMAGE as DEFAULT_IMAGE
from models.config import SinGANConfig
from models.singan.checkpoint import load_singan, save_singan
from models.singan.evaluation import diversity, reconstruction_rmse
from models.singan.image import image_name, load_image
from models.singan.pyramid import scale_sizes
from models.singan.sampling import reconstruct, sample, sample_at_size
from models.singan.state import SinGANState, init_state
from models.singan.trainer import METRIC_NAMES, Callback, fit

__all__ = ["DEFAULT_IMAGE", "METRIC_NAMES", "Callback", "SinGANConfig", "SinGANState", "diversity", "fit",
           "image_name", "init_state", "load_image", "load_singan", "reconstruct", "reconstruction_rmse", "sample",
           "sample_at_size", "save_singan", "scale_sizes"]
