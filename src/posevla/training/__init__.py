"""posevla.training."""
