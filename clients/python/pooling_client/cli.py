"""The `pool` command line (the client's `cli` extra: click, Pillow, tqdm).

    pool ops                                   # the operations
    pool ops max2d                             # one operation's parameters
    pool max2d input.npy --kernel-size 2 -o out.npz
    pool avg2d photos/ --kernel-size 4 -o small/ --format png
    pool max3d volume.npy --kernel-size 2 --dry-run

One subcommand per operation, generated from the client's catalogue, with one option per
parameter. Inputs are .npy, .npz (member `input`, and `indices` for max-unpool) or PNG/JPEG
files (pooled as (1, C, H, W) float32), folders of them, or glob patterns. The service's URL
and key come from --url/--api-key or POOL_URL/POOL_API_KEY. An error answer exits 1 with the
problem's detail.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

try:
    import click
    import httpx
    import numpy as np
    from PIL import Image
    from tqdm import tqdm
except ImportError as missing:  # pragma: no cover - the message is the point
    raise SystemExit(f"the pool command needs the cli extra: pip install 'pooling-client[cli]' ({missing})") from None

from pooling_client._catalogue import OPERATIONS
from pooling_client.client import PoolClient, PoolError

ARRAYS = (".npy", ".npz")
IMAGES = (".png", ".jpg", ".jpeg")
FORMATS = ("npy", "npz", "png")
# Pillow modes read as they are: grey, grey and alpha, RGB(A), 16- and 32-bit grey.
IMAGE_MODES = ("L", "LA", "RGB", "RGBA", "I;16", "I")


def option_value(text: str) -> Any:
    """An option's text as the service reads a query parameter: JSON where it parses (`2`,
    `[3,2]`, `[[0,1],[1,0]]`, `"same"`), else a comma-separated list of numbers, else the word."""
    try:
        return json.loads(text, parse_constant=_word)
    except ValueError:
        pass
    if "," in text:
        try:
            return [json.loads(part, parse_constant=_word) for part in text.split(",")]
        except ValueError:
            pass
    return text


def _word(constant: str) -> str:
    """`Infinity` and `NaN` stay the words the service reads (an Lp norm's `Infinity`)."""
    return constant


def inputs(patterns: tuple[str, ...]) -> list[Path]:
    """The files named: each a file, a folder (its arrays and images, less the results an
    earlier run wrote beside them, `x.max2d.npz`), or a glob pattern."""
    results = {f".{name}" for name in OPERATIONS}
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.suffix.lower() in ARRAYS + IMAGES and Path(p.stem).suffix not in results
                )
            )
        elif path.exists():
            found.append(path)
        else:
            matched = sorted(Path(p) for p in glob.glob(pattern))
            if not matched:
                raise click.BadParameter(f"no such file, folder or match: {pattern}", param_hint="INPUTS")
            found.extend(matched)
    return found


def read(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(tensor, indices or None) from a file; an image as (1, C, H, W) float32 with its values."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                # `output` too: a max pooling's result with its indices unpools as it is.
                member = next((m for m in ("input", "output") if m in archive.files), None)
                if member is None:
                    raise click.ClickException(f"{path}: an .npz input needs a member named input")
                return archive[member], archive["indices"] if "indices" in archive.files else None
        if suffix in IMAGES:
            with Image.open(path) as opened:
                image = opened if opened.mode in IMAGE_MODES else _as_rgb(opened)
                pixels = np.asarray(image)
            planes = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
            return planes[None].astype(np.float32), None  # 8- and 16-bit values are exact in float32
    except (OSError, ValueError) as error:
        raise click.ClickException(f"{path}: cannot be read: {error}") from None
    raise click.ClickException(f"{path}: not a .npy, .npz, PNG or JPEG file")


def _as_rgb(image: Image.Image) -> Image.Image:
    """Palettes, CMYK and the rest: as RGB(A) pixels."""
    return image.convert("RGBA" if "transparency" in image.info else "RGB")


def write(path: Path, output: np.ndarray, indices: np.ndarray | None, kind: str) -> None:
    """The result at exactly `path` (numpy adds no suffix to an open file); an image as 8-bit
    pixels, each value rounded and clipped to 0–255."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png":
        planes = output[0] if output.ndim == 4 and output.shape[0] == 1 else output
        if planes.ndim != 3 or planes.shape[0] not in (1, 2, 3, 4):
            raise click.ClickException(f"an output of shape {list(output.shape)} is not an image; use --format npy")
        pixels = np.clip(np.rint(np.moveaxis(planes, 0, -1).astype(np.float64)), 0, 255).astype(np.uint8)
        try:
            Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
        except (OSError, ValueError) as error:
            raise click.ClickException(f"{path}: cannot be written: {error}") from None
        return
    with path.open("wb") as file:
        if kind == "npy":
            np.save(file, output, allow_pickle=False)
        else:
            arrays = {"output": output} if indices is None else {"output": output, "indices": indices}
            np.savez(file, **arrays)  # type: ignore[arg-type]


def _format_of(output: Path | None, many: bool, requested: str | None) -> str:
    if requested:
        return requested
    if output is not None and not many and output.suffix.lower().lstrip(".") in (*FORMATS, "jpg", "jpeg"):
        suffix = output.suffix.lower().lstrip(".")
        return "png" if suffix in ("jpg", "jpeg") else suffix
    return "npz"


def _target(path: Path, output: Path | None, many: bool, name: str, kind: str) -> Path:
    """Where an input's result goes: beside it (`x.max2d.npz`), in the output folder, or at -o."""
    if output is None:
        return path.with_name(f"{path.stem}.{name}.{kind}")
    return output / f"{path.stem}.{kind}" if many else output


def _dry_runs(client: PoolClient, name: str, files: list[Path], params: dict[str, Any]) -> None:
    rest = {key: value for key, value in params.items() if key != "input_shape"}
    targets: list[Path | None] = [*files] or [None]
    for path in targets:
        shape = params.get("input_shape") or (list(read(path)[0].shape) if path else None)
        try:
            plan = client.pool(name, input_shape=shape, **rest)
        except PoolError as error:
            raise _fail(error, path) from None
        except httpx.HTTPError as error:
            raise click.ClickException(f"the service did not answer: {error}") from None
        click.echo(json.dumps({"input": str(path) if path else None, **plan}))


def _fail(error: PoolError, path: Path | None = None) -> click.ClickException:
    where = f"{path}: " if path else ""
    lines = [f"{where}{error.status} {error.title}: {error.detail}"]
    for item in error.errors or []:
        lines.append(f"  {'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg')}")
    if error.request_id:
        lines.append(f"  request id: {error.request_id}")
    return click.ClickException("\n".join(lines))


def _type_name(spec: dict[str, Any]) -> str:
    if "anyOf" in spec:
        return " | ".join(dict.fromkeys(_type_name(choice) for choice in spec["anyOf"]))
    if "enum" in spec:
        return " | ".join(str(value) for value in spec["enum"])
    if "const" in spec:
        return str(spec["const"])
    if spec.get("type") == "array":
        return f"list of {_type_name(spec.get('items') or {'type': 'number'})}"
    return str(spec.get("type", "tensor"))


def _operation_command(name: str, entry: dict[str, Any]) -> click.Command:
    options: list[click.Parameter] = []
    for field, spec in entry["params"].items():
        if field == "indices":
            continue  # from the .npz input's `indices` member, or --indices
        flag = "--" + field.replace("_", "-")
        default = spec.get("default")
        help_text = spec.get("description", "") + ("" if default is None else f" Default: {json.dumps(default)}.")
        kinds = [choice.get("type") for choice in spec.get("anyOf", [spec])]
        choices = [value for choice in spec.get("anyOf", [spec]) for value in choice.get("enum", [])]
        if "boolean" in kinds:  # true, false, or (where null is allowed) not given
            options.append(click.Option([f"{flag}/--no-{flag[2:]}", field], default=None, help=help_text))
        elif choices and set(kinds) <= {"string", "null", None}:
            options.append(click.Option([flag, field], type=click.Choice(choices), help=help_text))
        else:
            options.append(
                click.Option(
                    [flag, field],
                    required=field in entry["required"],
                    metavar=_type_name(spec).upper().replace(" ", "_")[:40],
                    help=help_text,
                )
            )
    options += [
        click.Argument(["paths"], nargs=-1, metavar="INPUTS..."),
        click.Option(
            ["-o", "--output", "output_text"],
            type=click.Path(),
            help="A file, or a folder (for many inputs, or written with a trailing /).",
        ),
        click.Option(
            ["--format", "kind"], type=click.Choice(FORMATS), help="Output format; default: -o's suffix, else npz."
        ),
    ]
    if "indices" in entry["params"]:
        options.append(
            click.Option(
                ["--indices", "indices_path"],
                type=click.Path(exists=True, path_type=Path),
                help="A .npy of the argmax indices (else the .npz input's indices member).",
            )
        )

    @click.pass_obj
    def command(
        settings: dict[str, Any], /, paths: tuple[str, ...], output_text: str | None, kind: str | None, **given: Any
    ) -> None:
        indices_path = given.pop("indices_path", None)
        params = {
            key: value if isinstance(value, bool) else option_value(value)
            for key, value in given.items()
            if value is not None
        }
        output = None if output_text is None else Path(output_text)
        if output is not None and output_text is not None and output_text.endswith(("/", os.sep)):
            output.mkdir(parents=True, exist_ok=True)  # `-o out/` names a folder, even for one input
        files = inputs(paths)
        if not files and not params.get("input_shape"):
            raise click.UsageError("give one or more INPUTS (files, folders or globs), or --input-shape with --dry-run")
        with PoolClient(settings["url"], api_key=settings["api_key"], timeout=settings["timeout"]) as client:
            if params.get("dry_run"):
                _dry_runs(client, name, files, params)
                return
            many = len(files) > 1 or (output is not None and output.is_dir())
            chosen = _format_of(output, many, kind)
            if chosen == "png" and not entry["reference"].endswith("2d"):
                raise click.UsageError(f"{name} does not give images; use --format npy or npz")
            targets = [_target(path, output, many, name, chosen) for path in files]
            repeated = [str(t) for t, count in Counter(targets).items() if count > 1]
            if repeated:
                raise click.UsageError(f"several inputs would be written to {repeated[0]}; name them apart")
            overwritten = {p.resolve() for p in files} & {t.resolve() for t in targets}
            if overwritten:
                raise click.UsageError(
                    f"{sorted(overwritten)[0]} would be overwritten by its result; choose another -o"
                )
            # A bar for many files, and only on a terminal (disable=None).
            bar = tqdm(
                list(zip(files, targets, strict=True)),
                disable=None if len(files) > 1 else True,
                unit="file",
                file=sys.stderr,
            )
            for path, target in bar:
                x, indices = read(path)
                if indices_path is not None:
                    indices = np.load(indices_path, allow_pickle=False)
                try:
                    answer = client.pool(name, x, indices=indices, **params)
                except PoolError as error:
                    raise _fail(error, path) from None
                except httpx.HTTPError as error:
                    raise click.ClickException(
                        f"{path}: the service at {settings['url']} did not answer: {error}"
                    ) from None
                result, result_indices = answer if isinstance(answer, tuple) else (answer, None)
                write(target, result, result_indices, chosen)
                if len(files) < 2:
                    click.echo(f"{target}: {list(result.shape)} {result.dtype}")

    return click.Command(
        name,
        callback=command,
        params=options,
        help=f"{entry['summary']}: {entry['reference']}.",
        short_help=entry["summary"],
    )


class Operations(click.Group):
    """One subcommand per operation, and `ops`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return ["ops", *OPERATIONS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "ops":
            return ops
        name = cmd_name.replace("_", "-")
        return _operation_command(name, OPERATIONS[name]) if name in OPERATIONS else None


@click.command()
@click.argument("op", required=False)
def ops(op: str | None) -> None:
    """The operations, or one operation's parameters."""
    if op is None:
        for name, entry in OPERATIONS.items():
            click.echo(f"{name:18} {entry['summary']:32} {entry['reference']}")
        return
    name = op.replace("_", "-")
    if name not in OPERATIONS:
        raise click.BadParameter(f"no operation {op}; `pool ops` lists them", param_hint="OP")
    entry = OPERATIONS[name]
    click.echo(f"{name}: {entry['summary']}, {entry['reference']}\n")
    for field, spec in entry["params"].items():
        required = "required" if field in entry["required"] else f"default {json.dumps(spec.get('default'))}"
        click.echo(f"  --{field.replace('_', '-')} ({_type_name(spec)}; {required})")
        click.echo(f"      {spec.get('description', '')}")


@click.group(cls=Operations, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url", envvar="POOL_URL", default="http://127.0.0.1:8000", show_default=True, help="The service (env POOL_URL)."
)
@click.option("--api-key", envvar="POOL_API_KEY", default=None, help="An API key (env POOL_API_KEY).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for each answer.")
@click.version_option(package_name="pooling-client")
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None, timeout: float) -> None:
    """Pool tensors and images with the pooling service: `pool OP INPUTS... [options]`."""
    ctx.obj = {"url": url, "api_key": api_key, "timeout": timeout}
