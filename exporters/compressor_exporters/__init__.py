"""compressor's built-in exporters; each submodule is its own plugin (entry point)."""
