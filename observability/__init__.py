"""Metrics, tracing and structured logging shared by every long-running component."""
