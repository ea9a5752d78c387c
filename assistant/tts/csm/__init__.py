"""Sesame's CSM speech model: a fast, exact, streaming engine (see CSMEngine)."""

from assistant.hub import PathError

from .engine import AudioChunk, CSMEngine, GenerationResult
from .weights import CheckpointError

__all__ = ["AudioChunk", "CSMEngine", "CheckpointError", "GenerationResult", "PathError"]
