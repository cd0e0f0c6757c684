"""posevla.geometry."""
