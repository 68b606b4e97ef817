"""sparsebench: the sparsefs benchmark harness behind bench-scripts/run (see bench-scripts/README.md)."""
