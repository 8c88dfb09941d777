"""Moved to :mod:`vlmo_cli.inference.embed` (embedding files) and :mod:`vlmo_cli.factory` (the inference model);
kept until the redesign lands."""

from .factory import InferenceModel, as_inference_model, load_inference_model, pick_device  # noqa: F401
from .inference.embed import *  # noqa: F401,F403
from .inference.embed import image_tensor as _image_tensor  # noqa: F401
from .layout import IMAGE_SUFFIXES, resolve_model_path, run_folder_of  # noqa: F401
