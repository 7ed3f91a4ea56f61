"""python -m compressor runs the CLI."""

from compressor.entry import main

if __name__ == "__main__":
    main()
