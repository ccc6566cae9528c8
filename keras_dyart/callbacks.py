"""Keras callbacks of keras-dyart (kept for imports; the callback lives with its analysis).

`BoundaryDynamics` is `keras_dyart.dynamics.callback.BoundaryDynamics`, also
`keras_dyart.dynamics.BoundaryDynamics`.
"""

from keras_dyart.dynamics.callback import BoundaryDynamics

__all__ = ["BoundaryDynamics"]
