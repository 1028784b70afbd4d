"""python -m aiprod.emergency TYPE [--language hi] [--region ...] [--out alert.mp4]"""

import sys

from aiprod.emergency.render import main

sys.exit(main())
