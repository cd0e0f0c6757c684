"""posevla.data."""
