"""Built-in benchmarks: generated or package-shipped data, small models trained on the CPU."""
