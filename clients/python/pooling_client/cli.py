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
import sys
from pathlib import Path
from typing import Any

try:
    import click
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


def option_value(text: str) -> Any:
    """An option's text as the service reads a query parameter: JSON where it parses (`2`,
    `[3,2]`, `[[0,1],[1,0]]`, `"same"`), else a comma-separated list of numbers, else the word."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    if "," in text:
        try:
            return [json.loads(part) for part in text.split(",")]
        except ValueError:
            pass
    return text


def inputs(patterns: tuple[str, ...]) -> list[Path]:
    """The files named: each a file, a folder (its arrays and images), or a glob pattern."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in ARRAYS + IMAGES))
        elif path.exists():
            found.append(path)
        else:
            matched = sorted(Path(p) for p in glob.glob(pattern))
            if not matched:
                raise click.BadParameter(f"no such file, folder or match: {pattern}", param_hint="INPUTS")
            found.extend(matched)
    return found


def read(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(tensor, indices or None) from a file."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), None
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if "input" not in archive.files:
                raise click.ClickException(f"{path}: an .npz input needs a member named input")
            return archive["input"], archive["indices"] if "indices" in archive.files else None
    if suffix in IMAGES:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB" if image.mode not in ("L", "RGB", "RGBA") else image.mode))
        planes = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
        return planes[None].astype(np.float32), None
    raise click.ClickException(f"{path}: not a .npy, .npz, PNG or JPEG file")


def write(path: Path, output: np.ndarray, indices: np.ndarray | None, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "npy":
        np.save(path, output, allow_pickle=False)
    elif kind == "npz":
        arrays = {"output": output} if indices is None else {"output": output, "indices": indices}
        np.savez(path, **arrays)  # type: ignore[arg-type]
    else:
        planes = output[0] if output.ndim == 4 else output
        if planes.ndim != 3 or planes.shape[0] not in (1, 3, 4):
            raise click.ClickException(f"an output of shape {list(output.shape)} is not an image; use --format npy")
        pixels = np.clip(np.rint(np.moveaxis(planes, 0, -1).astype(np.float64)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def _format_of(output: Path | None, many: bool, requested: str | None) -> str:
    if requested:
        return requested
    if output is not None and not many and output.suffix.lower().lstrip(".") in (*FORMATS, "jpg", "jpeg"):
        suffix = output.suffix.lower().lstrip(".")
        return "png" if suffix in ("jpg", "jpeg") else suffix
    return "npz"


def _fail(error: PoolError) -> click.ClickException:
    lines = [f"{error.status} {error.title}: {error.detail}"]
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
        if spec.get("type") == "boolean":
            options.append(click.Option([f"{flag}/--no-{flag[2:]}", field], default=None, help=help_text))
        else:
            options.append(
                click.Option(
                    [flag, field],
                    required=field in entry["required"],
                    metavar=_type_name(spec).upper().replace(" ", "_")[:40] if "enum" not in spec else None,
                    type=click.Choice([str(v) for v in spec["enum"]]) if "enum" in spec else str,
                    help=help_text,
                )
            )
    options += [
        click.Argument(["paths"], nargs=-1, metavar="INPUTS..."),
        click.Option(
            ["-o", "--output", "output"], type=click.Path(path_type=Path), help="A file, or a folder for many inputs."
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
        settings: dict[str, Any], /, paths: tuple[str, ...], output: Path | None, kind: str | None, **given: Any
    ) -> None:
        indices_path = given.pop("indices_path", None)
        params = {
            key: value if isinstance(value, bool) else option_value(value)
            for key, value in given.items()
            if value is not None
        }
        files = inputs(paths)
        if not files and not params.get("input_shape"):
            raise click.UsageError("give one or more INPUTS (files, folders or globs), or --input-shape with --dry-run")
        with PoolClient(settings["url"], api_key=settings["api_key"], timeout=settings["timeout"]) as client:
            if params.get("dry_run"):
                targets: list[Path | None] = [*files] or [None]
                for path in targets:
                    shape = params.get("input_shape") or (list(read(path)[0].shape) if path else None)
                    try:
                        rest = {key: value for key, value in params.items() if key != "input_shape"}
                        plan = client.pool(name, input_shape=shape, **rest)
                    except PoolError as error:
                        raise _fail(error) from None
                    click.echo(json.dumps({"input": str(path) if path else None, **plan}))
                return
            many = len(files) > 1 or (output is not None and output.is_dir())
            chosen = _format_of(output, many, kind)
            # A bar for many files, and only on a terminal (disable=None).
            for path in tqdm(files, disable=None if len(files) > 1 else True, unit="file", file=sys.stderr):
                x, indices = read(path)
                if indices_path is not None:
                    indices = np.load(indices_path, allow_pickle=False)
                try:
                    answer = client.pool(name, x, indices=indices, **params)
                except PoolError as error:
                    raise _fail(error) from None
                result, result_indices = answer if isinstance(answer, tuple) else (answer, None)
                if output is None:
                    target = path.with_name(f"{path.stem}.{name}.{chosen}")
                elif many:
                    target = output / f"{path.stem}.{chosen}"
                else:
                    target = output
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
