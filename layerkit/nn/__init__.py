"""Network runtime: the layer API, the model, initializers, losses, optimizers, schedules."""
