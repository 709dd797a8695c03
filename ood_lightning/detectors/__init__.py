"""OOD detectors: each turns a batch into per-sample OOD scores (higher = more OOD)."""
