#!/usr/bin/env python
"""Convert released PyTorch weights to a jsr model directory. See `--help` and README.md."""

import sys

from jsr.convert import main

if __name__ == "__main__":
    sys.exit(main())
