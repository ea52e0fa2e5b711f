"""The model layer: MLlib pipeline, local scorer compiled from it, MLflow registry helpers.

Imports point down only: this package imports patternalarm, never the reverse. Submodules that
need Spark or MLflow import them themselves, so importing ``models`` stays cheap.
"""
