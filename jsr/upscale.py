"""``python -m jsr.upscale``: super-resolve image files or folders with a converted or trained generator.

    python -m jsr.upscale --weights DIR --input PATH --output PATH [--tile N] [--overlap N] [--background COLOUR]

PNG, JPEG, WebP, TIFF, BMP, GIF in (grayscale, palette, 16-bit, RGBA included; EXIF orientation applied; the
first frame of an animation, with a notice); PNG out, RGB, or RGBA when the input
had alpha and no --background was given (alpha is upscaled with bicubic and re-attached). A folder is processed
recursively with relative names kept; a file that cannot be read is reported by name, the others still run, and
the exit code is 1 if any failed. Outputs are written atomically (no half-written PNGs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from jsr import compile_cache, runtime
from jsr.errors import FAILURE, USAGE, UserError, run_cli
from jsr.hub import weights_help
from jsr.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageReadError,
    composite,
    image_size,
    list_images,
    parse_colour,
    pixel_limit,
    read_image,
    resize,
    to_uint8,
    write_png,
)

# Input pixels per compiled canvas shape from which --conv auto takes Winograd: its ~4 s of extra compilation per
# shape (16-block generator, 2-core CPU) against ~0.16 s saved per 128x128 input pixels.
WINOGRAD_MIN_PIXELS = 400_000


def input_size(path: Path, max_pixels: int | None = None) -> tuple[int, int] | None:
    """Upright (height, width) of an image file from its header (None if unusable: reported when it is processed)."""
    try:
        return image_size(path, max_pixels)
    except ImageReadError:
        return None


def pays_for_winograd(upscaler, sizes) -> bool:
    """Whether the input pixels per canvas shape to compile reach ``WINOGRAD_MIN_PIXELS``."""
    sizes = [size for size in sizes if size is not None]
    shapes = {upscaler.canvas_shape(h, w) for h, w in sizes}
    return bool(shapes) and sum(h * w for h, w in sizes) / len(shapes) >= WINOGRAD_MIN_PIXELS


class UpscaleUsageError(UserError):
    """Bad --input / --output combination."""


def plan_outputs(input_path: Path, output_path: Path, overwrite_inputs: bool = False) -> list[tuple[Path, Path]]:
    """(source, destination) pairs; a folder input maps to a folder output with relative names kept. An output that
    would replace one of the inputs is refused unless ``overwrite_inputs``."""
    if input_path.is_dir():
        if output_path.exists() and not output_path.is_dir():
            raise UpscaleUsageError(f"--input is a folder, so --output must be a folder, but {output_path} is a file")
        folder_in, folder_out = input_path.resolve(), output_path.resolve()
        nested = folder_out != folder_in and folder_out.is_relative_to(folder_in)
        # a nested output folder holds the previous run's outputs, not inputs
        sources = [s for s in list_images(input_path) if not (nested and s.resolve().is_relative_to(folder_out))]
        if not sources:
            raise UpscaleUsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {input_path}")
        jobs = [(src, output_path / src.relative_to(input_path).with_suffix(".png")) for src in sources]
    elif not input_path.exists():
        raise UpscaleUsageError(f"--input {input_path} does not exist")
    elif output_path.is_dir() or output_path.suffix == "":
        jobs = [(input_path, output_path / f"{input_path.stem}.png")]
    elif output_path.suffix.lower() != ".png":
        raise UpscaleUsageError(f"outputs are PNG; give --output a .png name or a folder, not {output_path.name}")
    else:
        jobs = [(input_path, output_path)]
    if not overwrite_inputs:
        _refuse_replacing_inputs(jobs)
    return jobs


def _identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def _refuse_replacing_inputs(jobs: list[tuple[Path, Path]]) -> None:
    inputs = {source.resolve(): source for source, _ in jobs}  # resolve(): through symlinks too
    identities = {_identity(source): source for source, _ in jobs}  # and case-insensitive file systems
    clashes = [
        (inputs.get(d.resolve()) or identities[_identity(d)], d)
        for _, d in jobs
        if d.resolve() in inputs or (d.exists() and _identity(d) in identities)
    ]
    if clashes:
        source, destination = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise UpscaleUsageError(
            f"--output would replace the input {source} with its upscale ({destination}){more}; choose another "
            "--output, or pass --overwrite-inputs to replace the originals"
        )


def upscale_file(
    upscaler, source: Path, destination: Path, background, progress=None, max_pixels: int | None = None
) -> tuple[int, int]:
    """Read, super-resolve and write one image; returns the output (height, width)."""
    image = read_image(source, max_pixels)
    rgb, alpha = image.rgb, image.alpha
    if alpha is not None and background is not None:
        rgb, alpha = composite(rgb, alpha, background), None
    sr = upscaler.upscale(rgb, out_dtype=np.uint8, progress=progress)
    if alpha is not None:
        sr_alpha = to_uint8(np.clip(resize(alpha, sr.shape[:2], "bicubic"), 0, 1))
        sr = np.concatenate([sr, sr_alpha[..., None]], axis=2)
    write_png(destination, sr)
    return sr.shape[0], sr.shape[1]


class TileProgress:
    """A tile-level progress bar, shown only for images that are actually split into tiles."""

    def __init__(self, name: str):
        self.name = name
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.name, unit="tile", leave=False, file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jsr-upscale",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  jsr-upscale --weights weights/srgan --input photo.jpg --output photo_x4.png\n"
        "  jsr-upscale --weights realesrgan-x4plus --input photos/ --output photos_x4/ --tile 256",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--weights", required=True, help=weights_help())
    parser.add_argument("--input", required=True, type=Path, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, type=Path, help="a .png file, or a folder")
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="tile side in LR pixels (default: tile only images larger than 256 px + context)",
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="context around each tile in LR pixels (default: the receptive radius: exact)",
    )
    parser.add_argument(
        "--background",
        default=None,
        help="composite transparent images onto this colour (white, #rrggbb, r,g,b) -> RGB output",
    )
    parser.add_argument(
        "--max-pixels",
        type=pixel_limit,
        default=MAX_PIXELS,
        metavar="N",
        help="refuse inputs over N pixels before decoding them (default %(default)s; a 64 MP input upscales to 1 GP)",
    )
    parser.add_argument(
        "--overwrite-inputs",
        action="store_true",
        help="allow outputs to replace input files (by default an output that is one of the inputs is refused)",
    )
    parser.add_argument(
        "--conv",
        choices=["auto", "xla", "winograd"],
        default="auto",
        help="convolution path: 'winograd' takes ~0.6x the time on a CPU but compiles ~4 s longer per image shape; "
        f"auto = winograd (on a CPU) when the inputs come to {WINOGRAD_MIN_PIXELS / 1e6:.1f}+ megapixels per shape "
        "to compile, else xla",
    )
    compile_cache.add_flag(parser)
    args = parser.parse_args(argv)
    runtime.start_command(not args.no_compile_cache)

    background = None
    if args.background is not None:
        try:
            background = parse_colour(args.background)
        except ValueError as e:
            parser.error(str(e))
    if args.tile is not None and args.tile < 8:
        parser.error("--tile must be at least 8 LR pixels")
    if args.overlap is not None and args.overlap < 0:
        parser.error("--overlap must be >= 0")
    return run_cli(lambda: _run(args, background))


def _run(args: argparse.Namespace, background) -> int:
    jobs = plan_outputs(args.input, args.output, overwrite_inputs=args.overwrite_inputs)

    # Heavy imports after argument checks, so usage errors answer instantly.
    from tqdm import tqdm

    from jsr.checkpoints import load_model
    from jsr.hub import resolve_weights
    from jsr.inference import Upscaler

    module, variables = load_model(resolve_weights(args.weights), expect="generator")
    options = dict(tile=args.tile, overlap=args.overlap, force_tiles=args.tile is not None)
    upscaler = Upscaler(module, variables, conv=module.conv if args.conv == "auto" else args.conv, **options)
    if args.conv == "auto" and pays_for_winograd(upscaler, [input_size(source, args.max_pixels) for source, _ in jobs]):
        upscaler = Upscaler(module, variables, conv="auto", **options)  # Winograd on a CPU
    if upscaler.radius is None and args.tile is not None:
        print(
            "note: this network has global operations: with --tile its tiles differ slightly from the whole image "
            "(see README, Architectures); without --tile images run whole",
            file=sys.stderr,
        )
    elif not upscaler.exact:
        print(
            f"warning: --overlap {upscaler.overlap} is below the receptive radius "
            f"{upscaler.radius}: tile seams may differ from an untiled run",
            file=sys.stderr,
        )

    failures: list[str] = []
    claimed: dict[Path, Path] = {}
    start = time.perf_counter()
    bar = tqdm(jobs, desc="upscale", unit="img", disable=len(jobs) == 1, file=sys.stderr)
    for source, destination in bar:
        if destination in claimed:
            failures.append(
                f"{source}: its output {destination} is also the output of {claimed[destination]}; rename one of them"
            )
            continue
        claimed[destination] = source
        tiles = TileProgress(source.name)
        try:
            upscale_file(upscaler, source, destination, background, progress=tiles, max_pixels=args.max_pixels)
        except ImageReadError as e:
            failures.append(str(e))
            bar.write(f"error: {e}", file=sys.stderr)
        finally:
            tiles.close()
    done = len(jobs) - len(failures)
    print(
        f"wrote {done} image(s) to {args.output} in {time.perf_counter() - start:.1f} s (conv={upscaler.module.conv})"
        + (f"; {len(failures)} failed" if failures else "")
    )
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    if failures and len(jobs) == 1:
        return USAGE  # the one input is bad: bad input, not a partly failed run
    return FAILURE if failures else 0


if __name__ == "__main__":
    sys.exit(main())
