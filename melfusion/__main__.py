import sys

from melfusion.cli import main

sys.exit(main())
