"""Deprecated: the runtime model moved to :mod:`layerkit.nn.network` and is called ``Network``.

``from layerkit.nn.model import Model`` keeps working until 0.3 with a DeprecationWarning;
import ``Network`` (and ``load_npz``) from ``layerkit.nn.network`` instead.
"""

from __future__ import annotations

import warnings

from layerkit.nn.network import Network, load_npz

warnings.warn("layerkit.nn.model is deprecated: the runtime model is layerkit.nn.network.Network "
              "(load_npz moved there too)", DeprecationWarning, stacklevel=2)

#: the old name of :class:`layerkit.nn.network.Network`
Model = Network

__all__ = ["Model", "load_npz"]
