"""The serving side: the Starlette app, the request pipeline, providers, limits, cache, routing."""
