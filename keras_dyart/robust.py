"""TEMPORARY shim during the redesign; removed before commit."""
from keras_dyart.methods.base import RobustModel  # noqa: F401
