"""compressor's built-in methods; each submodule is its own plugin (entry point)."""
