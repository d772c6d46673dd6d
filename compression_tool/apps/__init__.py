"""Applications: workflows composed from the engine, taking typed configs (dataclasses), never argv."""
