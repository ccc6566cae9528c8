"""Deprecated: the attacks' shared host-side work is `keras_dyart.attacks.driver`.

Kept only so that ``from keras_dyart.attacks import _common`` (tests/test_off_demo_path.py)
still finds `UnitBoxModel`; import it from `keras_dyart.attacks.driver` instead.
"""

from keras_dyart.attacks.driver import UnitBoxModel

__all__ = ["UnitBoxModel"]
