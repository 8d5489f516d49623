"""``python -m data.synthetic``: render the bundled synthetic world into shards (see :func:`.build.main`)."""

import sys

from .build import main

sys.exit(main())
