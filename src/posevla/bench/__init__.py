"""posevla.bench: the measurements behind `posevla bench ...` (throughput as ratios against a baseline run alongside)."""
