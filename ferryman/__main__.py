from gevent import monkey

monkey.patch_all()  # first statement of every entry point

import sys

from ferryman.cli import main

sys.exit(main())
