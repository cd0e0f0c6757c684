"""posevla.models."""
