import sys

from pyllm.chat.repl import main

sys.exit(main())
