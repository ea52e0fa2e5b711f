"""Batch Spark jobs, each a spark-submit entry with main(argv)."""
