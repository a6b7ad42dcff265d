"""Visibility: the request log, usage, metrics, traces and the dashboard."""
