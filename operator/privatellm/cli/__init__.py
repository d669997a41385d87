"""The `privatellm` command."""
