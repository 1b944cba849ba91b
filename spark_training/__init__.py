"""spark_training package."""
