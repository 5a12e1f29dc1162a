"""One package per paper (its model, training procedure, data reader where only it reads the format).
The name → method table is `mmbench.registry.method_registry`: nothing below this package imports it."""
