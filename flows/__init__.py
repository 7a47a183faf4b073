"""flows: Prefect flows that orchestrate builders, evals, registry and serving."""
