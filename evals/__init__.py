"""evals: quality (lm-eval vs the reference checkpoint), latency (Poisson load) and gates."""
