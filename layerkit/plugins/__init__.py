"""Plugin system: hook specifications, the plugin manager, the name -> class registry."""
