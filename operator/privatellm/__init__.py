"""Run LLMs on private data behind nine safety layers."""
