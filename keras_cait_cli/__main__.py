"""`python -m keras_cait_cli`: the `keras-cait` command line."""

import sys

from keras_cait_cli.main import main

if __name__ == "__main__":
    sys.exit(main())
