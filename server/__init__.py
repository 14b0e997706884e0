"""Interfaces: the `robopt` CLI, settings, and (later) the FastAPI service and history DB."""
