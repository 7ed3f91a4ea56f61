"""compressor's built-in evaluator plugins (one package per evaluator, found through entry points)."""
