import sys

from deepslim.cli import main

sys.exit(main())
