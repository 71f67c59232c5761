"""The hooks a layerkit plugin can implement.

Every hook uses the register-callback style: layerkit calls the hook with a
``register`` function and the plugin calls it once per thing it provides::

    import layerkit

    @layerkit.hookimpl
    def layerkit_register_layers(register):
        register(Swish)

Built-in layers, losses, optimizers and datasets are registered through these
same hooks (see ``DEFAULT_PLUGINS`` in :mod:`layerkit.default_plugins`); third-party
packages are found through the ``layerkit`` entry-point group. The hooks run
once, when the registry is first needed; nothing in training calls them.
"""

import pluggy

hookspec = pluggy.HookspecMarker("layerkit")


@hookspec
def layerkit_register_layers(register):
    """Register layer classes.

    :param register: call ``register(cls)`` with a subclass of
        :class:`layerkit.nn.layer.Layer`; its ``type`` attribute is the name used in
        model files. Registering a name another plugin already registered is
        reported as a conflict naming both plugins.
    """


@hookspec
def layerkit_register_losses(register):
    """Register loss classes (subclasses of :class:`layerkit.nn.losses.Loss`).

    :param register: call ``register(cls)``; ``cls.type`` is the name used in
        the model file's ``loss`` section.
    """


@hookspec
def layerkit_register_optimizers(register):
    """Register optimizer classes (subclasses of :class:`layerkit.nn.optimizers.Optimizer`).

    :param register: call ``register(cls)``; ``cls.type`` is the name used in
        ``training.optimizer.type``.
    """


@hookspec
def layerkit_register_callbacks(register):
    """Register training callbacks: loggers and other observers of a training run
    (subclasses of :class:`layerkit.training.trainer.Callback`).

    :param register: call ``register(cls)``; ``cls.type`` is the name used in
        ``layerkit fit --callback NAME`` and in the model file's
        ``training.callbacks`` list (``{"type": NAME, ...parameters}``, checked
        against ``cls.params_schema``). layerkit builds one per training run as
        ``cls(run_dir=PATH, **parameters)``; ``run_dir`` is None when training
        from the Python API without a run directory.
    """


@hookspec
def layerkit_register_datasets(register):
    """Register dataset loaders (subclasses of :class:`layerkit.data.Dataset`).

    :param register: call ``register(cls)``; ``cls.name`` is the name used in
        ``training.dataset``.
    """
