import sys

from memseries.cli import main

sys.exit(main())
