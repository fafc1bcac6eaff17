"""`python -m melfusion.data synth|check|import-musiccaps|import-melbench ...`"""
import sys

from melfusion.data.cli import main

sys.exit(main())
