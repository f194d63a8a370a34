"""Development tools: the local stack (``scripts/run``). Not part of the installed package."""
