"""Prepare a TFDS data set once, as ArrayRecord, so training reads it with ``tfds.data_source``.

    python -m jsr.data.prepare --dataset=pokemon [--manual-dir=DIR] [--data-dir=DIR] [--downscale=lanczos]
    python -m jsr.data.prepare --dataset=div2k [--data-dir=DIR]      # needs TensorFlow: pip install 'jsr[div2k]'

Pokemon needs no TensorFlow: it downloads the official artwork (internet) or reads ``*.png`` from ``--manual-dir``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from jsr.errors import UserError, run_cli

DATASETS = ("pokemon", "div2k")


def prepare_pokemon(data_dir: str | None, manual_dir: str | None, downscale: str = "bicubic"):
    from jsr.data.sources import tfds_with_builders

    tfds = tfds_with_builders()
    if manual_dir:
        folder = Path(manual_dir)
        if not folder.is_dir() or not any(folder.glob("*.png")):
            raise UserError(f"--manual-dir {folder} holds no *.png files (expected {{id}}.png artwork)")
    builder = tfds.builder(f"pokemon/{downscale}", data_dir=data_dir or None)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
    builder.download_and_prepare(download_config=config)
    return builder


def require_tensorflow() -> None:
    """DIV2K's catalog builder reads and writes through TensorFlow; say how to get it."""
    try:
        missing = importlib.util.find_spec("tensorflow") is None
    except ValueError:  # a stubbed module without a spec
        missing = True
    if missing:
        raise UserError(
            "preparing div2k/bicubic_x4 needs TensorFlow (the TFDS catalog builder uses tf.io). "
            "Install it with: pip install 'jsr[div2k]'  (or pip install tensorflow-cpu), then rerun "
            "python -m jsr.data.prepare --dataset=div2k. Reading the prepared data afterwards needs no TensorFlow."
        )


def prepare_div2k(data_dir: str | None):
    require_tensorflow()
    import tensorflow_datasets as tfds

    from jsr.data.sources import DIV2K_NAME

    # ArrayRecord so that training reads it with tfds.data_source, without TensorFlow.
    builder = tfds.builder(DIV2K_NAME, data_dir=data_dir or None, file_format="array_record")
    builder.download_and_prepare()
    return builder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jsr-prepare",
        description=__doc__,
        epilog="examples:\n  jsr-prepare --dataset=pokemon --manual-dir=artwork/\n  jsr-prepare --dataset=div2k",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument(
        "--data-dir", "--data_dir", dest="data_dir", default=None, help="TFDS data_dir (default ~/tensorflow_datasets)"
    )
    parser.add_argument(
        "--manual-dir",
        "--manual_dir",
        dest="manual_dir",
        default=None,
        help="pokemon only: folder of {id}.png artwork (offline)",
    )
    parser.add_argument("--downscale", default="bicubic", choices=("bicubic", "lanczos"), help="pokemon LR filter")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: prepare(args))


def prepare(args: argparse.Namespace) -> None:
    if args.dataset == "pokemon":
        builder = prepare_pokemon(args.data_dir, args.manual_dir, args.downscale)
    else:
        builder = prepare_div2k(args.data_dir)
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    print(f"prepared {builder.info.full_name} in {builder.data_dir}: {splits}")


if __name__ == "__main__":
    sys.exit(main())
