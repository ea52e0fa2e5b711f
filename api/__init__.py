"""The scoring API and live dashboard (FastAPI), served by uvicorn as its own process.

Imports point down only: api imports models and patternalarm, nothing imports api.
"""
