"""Development-only fault injection (`transsrgan chaos`, the tests): not in the wheel, not shipped to Spark."""
