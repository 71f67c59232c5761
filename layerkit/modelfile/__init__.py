"""Model files: JSON Schema, spec parsing and validation, topology, static shapes, building a model."""
