from pyllm.cli import main; import sys; sys.exit(main())
