"""posevla.data: formats, observation keys, example building, batching, sources, the doctor (no simulator)."""
