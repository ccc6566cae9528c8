"""Attacks, each written once in `keras.ops` and compiled per backend."""

from keras_dyart.attacks.pgd import pgd, project_ball

__all__ = ["pgd", "project_ball"]
