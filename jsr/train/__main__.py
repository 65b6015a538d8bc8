import sys

from jsr.train.cli import main

sys.exit(main())
