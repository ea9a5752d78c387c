"""Wiring of the assistant's components into runnable modes, and the embeddable `Assistant`."""

from pipelines.assistant import Assistant

__all__ = ["Assistant"]
