import sys

from enf.cli import main

sys.exit(main())
