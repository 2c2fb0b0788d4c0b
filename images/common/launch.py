#!/usr/bin/python3 -I
"""The entry script of the isol8 launcher: /opt/isol8/launch.py, next to the package /opt/isol8/isol8_launcher/.

The containers run ``python3 -I /opt/isol8/launch.py MODE``. Isolated mode
ignores the PYTHON* variables and the user's site directory, and (Python 3.11+)
leaves this script's directory off sys.path; it is put back here, explicitly,
so the package imported is the root-owned one beside this file, whatever the
environment says. The package is byte-compiled when the image is built (the
root filesystem is read-only at run time).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from isol8_launcher.main import main

if __name__ == "__main__":
    sys.exit(main())
