"""Thin Prefect, MLflow and Great Expectations adapters between flows/ and the library (models/, spark_training/)."""
