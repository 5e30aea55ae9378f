import sys

from tlprobe.cli import main

sys.exit(main())
