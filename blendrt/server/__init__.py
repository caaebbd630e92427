"""`blendrt serve`: an OpenAI-compatible HTTP server for a blend."""
