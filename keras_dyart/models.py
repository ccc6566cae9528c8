"""TEMPORARY shim during the redesign; removed before commit."""
from keras_dyart.methods.dyart import DyARTModel  # noqa: F401
