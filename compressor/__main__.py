"""python -m compressor runs the CLI."""

from compressor.cli import main

if __name__ == "__main__":
    main()
