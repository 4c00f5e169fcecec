"""Ray actors and the helpers that place them. The only place in the project that imports Ray."""
