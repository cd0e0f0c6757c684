"""posevla.eval."""
