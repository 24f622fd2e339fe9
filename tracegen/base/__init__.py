"""The bottom layer: the trace contract between tracegen and replay, and the plumbing every
command shares (errors, atomic files, CLI helpers, units). It imports nothing else of the project;
tracegen, replay and viz all build on it."""
