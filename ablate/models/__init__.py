"""Model stage: a registry of segmentation architectures, created by name.

Every model takes float images in [0, 1] (normalised inside) and returns logits
[N, num_classes, H, W] at the input size.
"""

from ablate.models import baseline, custom, resnet18, unet  # noqa: F401  (registers the models)
from ablate.models._registry import (check_model, create_model, list_models, model_identity, model_params,
                                     parse_model_args, register_model)

__all__ = ["check_model", "create_model", "list_models", "model_identity", "model_params", "parse_model_args",
           "register_model"]
