"""edge: an OpenAI-compatible proxy that persists conversations through chunkstore while they
stream."""
