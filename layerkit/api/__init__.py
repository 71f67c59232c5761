"""The Python API: ``layerkit.load``, :class:`Model` and ``layerkit.check_grads``.

``import layerkit`` stays light: these names are attributes of the top-level
package, imported on first use (see ``layerkit/__init__.py``).
"""

from layerkit.api.model import History, Model, UntrainedWarning, check_grads, load, load_dataset

__all__ = ["History", "Model", "UntrainedWarning", "check_grads", "load", "load_dataset"]
