"""posevla.eval: 3D grounding metrics and prediction, closed-loop rollouts, eval cards, videos, `eval sim`, reports."""
