"""posevla.bench: the measurements behind `posevla bench ...` (ratios against a baseline measured in the same run)."""
