import sys

from pyllm.quantize.cli import main

sys.exit(main())
