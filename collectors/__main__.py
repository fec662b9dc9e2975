"""`python -m collectors`: the same as the pulseboard-agent console script."""

import sys

from collectors.agent import main

sys.exit(main())
