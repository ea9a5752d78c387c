"""Wiring of the assistant's components into runnable modes."""
