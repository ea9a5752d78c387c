"""Text LLM backends behind one streaming interface, and text handling for speech."""
