"""OpenAI-compatible HTTP server: protocol models, handlers and app wiring kept apart."""
