"""registry: MLflow model registry with S3 artifacts, promote and rollback."""
