"""Sesame's CSM speech model: a fast, exact, streaming engine (see CSMEngine)."""

from .engine import AudioChunk, CSMEngine, GenerationResult
from .weights import CheckpointError

__all__ = ["AudioChunk", "CSMEngine", "CheckpointError", "GenerationResult"]
