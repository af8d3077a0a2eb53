import sys

from diffuser.cli import main

sys.exit(main())
