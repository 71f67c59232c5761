"""Parallel runtime: the layer thread pool, process-parallel steps, collectives, BLAS and allocator control."""
