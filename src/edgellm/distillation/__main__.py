"""``python -m edgellm.distillation ...`` (also ``accelerate launch -m edgellm.distillation ...``): the distill CLI."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
