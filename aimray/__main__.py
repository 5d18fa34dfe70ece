import sys

from aimray.cli import main

sys.exit(main())
