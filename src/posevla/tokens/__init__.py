"""posevla.tokens."""
