"""keras-dyart: robust training by margins for Keras 3 (TensorFlow, JAX, PyTorch)."""

from keras_dyart import architectures, augment, datasets, distribute, presets
from keras_dyart.boundary import find_boundary_points, quality_filter
from keras_dyart.losses import dyart_loss, robust_term
from keras_dyart.margins import soft_margin
from keras_dyart.models import DyARTModel
from keras_dyart.projection import project_to_hyperplane
from keras_dyart.weights import dyart_weights, h_prime

__version__ = "0.1.0"

__all__ = [
    "DyARTModel", "architectures", "augment", "datasets", "distribute", "presets", "dyart_loss", "dyart_weights",
    "find_boundary_points", "h_prime", "project_to_hyperplane", "quality_filter",
    "robust_term", "soft_margin",
]
