"""`python -m collectors`: the same as the pulseboard-agent console script."""

from __future__ import annotations

import sys

from collectors.agent import main

sys.exit(main())
