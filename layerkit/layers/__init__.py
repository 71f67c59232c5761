"""Built-in layers, one family per module. Each module is a plugin listed in
:data:`layerkit.plugins.manager.DEFAULT_PLUGINS` and registers its layers through the
same ``layerkit_register_layers`` hook third-party packages use."""
