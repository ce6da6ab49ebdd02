from .predict import main
import sys
sys.exit(main())
