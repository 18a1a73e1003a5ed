from lis.cli import main
import sys

sys.exit(main())
