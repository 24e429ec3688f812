"""Model stage: a registry of segmentation architectures, created by name.

Every model takes float images in [0, 1] (normalised inside) and returns logits
[N, num_classes, H, W] at the input size. Besides the registered names, a model can be named by
import path (`pkg.mod:build`) or as an smp architecture (`smp:Unet/resnet34`); see _external.
"""

from ablate.models import baseline, custom, resnet18, unet  # noqa: F401  (registers the models)
from ablate.models._registry import (check_model, check_model_name, create_model, external_names, list_models,
                                     model_args_from_flags, model_identity, model_option, model_params,
                                     parse_model_args, register_model)

__all__ = ["check_model", "check_model_name", "create_model", "external_names", "list_models", "model_args_from_flags",
           "model_identity", "model_option", "model_params", "parse_model_args", "register_model"]
