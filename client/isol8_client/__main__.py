"""``python -m isol8_client``: the same as the ``isol8`` command."""

import sys

from isol8_client.cli import main

sys.exit(main())
