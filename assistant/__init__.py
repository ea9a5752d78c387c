"""A streaming voice assistant around Sesame's CSM."""
