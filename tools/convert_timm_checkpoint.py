"""Converts a timm CaiT checkpoint into a keras-cait preset directory.

    python tools/convert_timm_checkpoint.py SOURCE OUTPUT_DIR \
        [--upload hf://<user>/<repo>] [--atol 1e-4] [--num-images 2]

The same command as `keras-cait convert` (see `keras_cait_cli.convert`):
SOURCE is a preset name (`cait_xxs24_224`), an `hf://timm/<repo>[@revision]`
handle or a local timm directory (`config.json` + `model.safetensors`).
Prints a JSON summary on the last line.
"""

import sys

from keras_cait_cli.main import main as cli_main


def main(argv=None):
    """Runs `keras-cait convert` with `argv`; returns the exit status."""
    return cli_main(["convert", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
