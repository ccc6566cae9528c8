"""keras-dyart: robust training by margins for Keras 3 (TensorFlow, JAX, PyTorch)."""

from keras_dyart import (
                         architectures,
                         attacks,
                         augment,
                         boundary,
                         config,
                         datasets,
                         distribute,
                         dynamics,
                         geometry,
                         methods,
                         presets,
                         recipe,
)
from keras_dyart.boundary import find_boundary_points, quality_filter
from keras_dyart.evaluation import MarginsReport, RobustnessReport, evaluate, margins_report
from keras_dyart.losses import dyart_loss, robust_term
from keras_dyart.margins import soft_margin
from keras_dyart.methods import (
                         CleanModel,
                         DyARTModel,
                         MARTModel,
                         MMAModel,
                         PGDATModel,
                         RobustModel,
                         TRADESModel,
)
from keras_dyart.projection import project_to_hyperplane
from keras_dyart.weights import dyart_weights, h_prime

__version__ = "0.1.0"

__all__ = [
    "CleanModel", "DyARTModel", "MARTModel", "MMAModel", "PGDATModel", "RobustModel",
    "TRADESModel", "architectures", "augment", "boundary", "config", "datasets",
    "geometry", "distribute", "methods",
    "presets", "recipe", "attacks", "evaluate", "margins_report", "MarginsReport",
    "RobustnessReport", "dynamics", "dyart_loss", "dyart_weights",
    "find_boundary_points", "h_prime", "project_to_hyperplane", "quality_filter",
    "robust_term", "soft_margin",
]
