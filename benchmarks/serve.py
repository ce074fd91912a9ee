"""The service against its floors, workloads W1-W4, side by side in one run.

Starts the service as deployed (`python -m app`, its JSON request log on) and
its baselines (`benchmarks.baseline_app`) with the same server settings (uvicorn,
uvloop, the service's connection protocol, one worker) on loopback ports, then:

- W1 tiny: max2d k=2 on 1x1x4x4 float32, nested JSON, return_indices; wrk
  with 32 connections against the service and against the baseline, in
  alternating rounds; for reference, also against a FastAPI endpoint that
  only parses, pools and encodes (the least a pooling endpoint can do), and
  the service pooling each request alone (POOL_MAX_BATCH=1); and one
  client's latency with batching and without.
- W2 medium JSON: max2d k=2 on 1x16x128x128 float32 as nested JSON, one
  client, against orjson decode + max_pool2d + encode in process.
- W3 large: max2d k=2 s=2 on 8x64x112x112 float32 (25.7 MB) as a raw .npy
  body (npz back) against np.load + max_pool2d + np.savez in process, and as
  npy_base64 in JSON against the same with pybase64; how far a fresh
  server's memory rises while it answers one W3 request, and its peak and
  what it holds after many more.
- W4 classifier head: global-avg2d on 32x512x7x7 float32 as npy_base64,
  against its in-process floor.
- W1 traced: the service with OpenTelemetry on, exporting OTLP to a local sink.
- The protocol over gRPC: W1 from a grpc.aio client with 32 calls in flight, and
  W3 as raw contents, against the same W3 as a raw .npy over REST and the floor.

W2-W4 run the service, the in-process floor, HTTP alone (a plain ASGI app under
the same server that reads the same body into one buffer, as the service does,
the rest of a large one straight from the socket, and answers as many bytes)
and a raw socket (`benchmarks.raw_transport`: the body received straight into
a buffer, the same number of bytes sent back) in turn in every round, and
compare the medians; the physical floor of W3 is the raw socket's time plus
`max_pool2d`'s alone on a tensor in hand.

    python benchmarks/serve.py [--threads N] [--repeat 15] [--seconds 5] [--rounds 3] [--only w1,grpc,w2,w3,w4]
    python benchmarks/serve.py --against ../old-checkout

With `--against DIR` it compares this checkout's service with the one in
another checkout instead (before and after a change): both serve W1-W4, in
turn in every round, and each workload's medians are set side by side.

wrk comes from Debian's package (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import orjson
import pybase64
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "app.main:app"
WORKLOADS = ("w1", "grpc", "w2", "w3", "w4")  # what --only chooses from
JSON_TYPES = ("application/json", "application/json")


def listening(port: int, deadline: float = 60) -> None:
    """Returns once something accepts connections on the loopback `port` (or the deadline passes)."""
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, deadline: float = 60, process: subprocess.Popen[bytes] | None = None) -> None:
    """Return once `url` answers 200; raise RuntimeError if it has not within `deadline`
    seconds, or once `process` (the server behind it) has exited."""
    end = time.monotonic() + deadline
    while process is None or process.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > end:
            break
        time.sleep(0.2)
    raise RuntimeError(f"{url} never became ready")


@contextmanager
def server(
    app: str, threads: int, root: Path = ROOT, grpc_port: int = 0, environment: dict[str, str] | None = None
) -> Iterator[tuple[int, int]]:
    """(port, pid) of a uvicorn process serving `app` from the checkout at `root` (the
    service's gRPC server on `grpc_port`, if any), with these variables besides. The
    service (`SERVICE`) runs as deployed, `python -m app`, with its JSON request log;
    the baselines (`benchmarks.baseline_app`) with the same server settings."""
    port = free_port()
    env = {**os.environ, "POOL_DEVICE": "cpu", "POOL_TORCH_THREADS": str(threads), "POOL_GRPC_PORT": str(grpc_port)}
    env.update({"POOL_HOST": "127.0.0.1", "POOL_PORT": str(port), "POOL_DRAIN_S": "0"}, **(environment or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    if app == SERVICE:
        command = [sys.executable, "-m", "app"]
    else:
        command = [sys.executable, "-m", "benchmarks.baseline_app", app, str(port)]
    # The server's logs (a JSON line per request, as deployed) go to a file, not the report.
    log = tempfile.NamedTemporaryFile("wb", prefix="pool-bench-", suffix=".log", delete=False)
    process = subprocess.Popen(command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        listening(port)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        os.unlink(log.name)


@contextmanager
def otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint on a loopback port that takes every export and keeps nothing:
    where a traced service sends its spans, to measure what tracing costs it."""
    import http.server
    import threading

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sink.server_address[1]}"
    finally:
        sink.shutdown()


def post(
    connection: http.client.HTTPConnection,
    path: str,
    body: bytes,
    content_type: str,
    accept: str,
    extra: dict[str, str] | None = None,
) -> bytes:
    headers = {"Content-Type": content_type, "Accept": accept, **(extra or {})}
    try:
        connection.request("POST", path, body=body, headers=headers)
    except (BrokenPipeError, ConnectionResetError):  # closed while idle (keep-alive timeout): again
        connection.close()
        connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {data[:300]!r}")
    return data


def interleaved(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Median milliseconds of each of `fns` over `repeat` rounds, each round running
    every one in turn, so that a slow spell of a shared machine falls on all alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, spent in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            spent.append((time.perf_counter() - start) * 1000)
    return [statistics.median(spent) for spent in times]


def memory_kib(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def wrk(port: int, body: bytes, seconds: int, connections: int = 32) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {orjson.dumps(body.decode()).decode()}\n"
        )
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name]
    output = subprocess.run([*command, f"http://127.0.0.1:{port}/pool/max2d"], capture_output=True, text=True).stdout
    os.unlink(script.name)

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", output, re.MULTILINE)
        assert match, output
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    assert rps and not errors, output
    return {"rps": float(rps.group(1)), "p50": latency("50"), "p99": latency("99")}


INFER = "/inference.GRPCInferenceService/ModelInfer"


def infer_message(op: str, x: np.ndarray, **parameters: int | bool) -> bytes:
    """A serialized ModelInferRequest with `x` as raw contents, as tritonclient.grpc sends it."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=op)
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    for key, value in parameters.items():
        setattr(request.parameters[key], "bool_param" if isinstance(value, bool) else "int64_param", value)
    return request.SerializeToString()


def grpc_rate(target: str, message: bytes, seconds: int, concurrency: int = 32) -> float:
    """ModelInfer calls a second with `concurrency` in flight, from one grpc.aio client (in
    this process, on the same cores as the server), the message serialized once."""
    import asyncio

    import grpc

    async def run() -> float:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary(INFER)
            loop = asyncio.get_running_loop()
            stop, done = loop.time() + seconds, 0

            async def worker() -> None:
                nonlocal done
                while loop.time() < stop:
                    await call(message)
                    done += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return done / seconds

    return asyncio.run(run())


def grpc_unary(target: str) -> Callable[[bytes], bytes]:
    """A blocking ModelInfer on a channel that takes messages of any size."""
    import grpc

    unlimited = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    return grpc.insecure_channel(target, options=unlimited).unary_unary(INFER)


def line(
    name: str,
    ours: float,
    floor: float,
    unit: str,
    target: str,
    transport: float | None = None,
) -> None:
    print(f"{name:<44} {ours:10.2f} {unit:<5} {floor:10.2f} {unit:<5} {ours / floor:6.2f}x  (target {target})")
    if transport is not None:
        rest = ours - transport
        print(
            f"{'   of which HTTP transport alone; the rest':<44} {transport:10.2f} {unit:<5} {rest:10.2f} {unit:<5} "
            f"{rest / floor:6.2f}x of the floor"
        )


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


class Workloads:
    """The request bodies of W1-W4."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.tiny = orjson.dumps(
            {
                "input": rng.standard_normal((1, 1, 4, 4)).astype(np.float32).tolist(),
                "kernel_size": 2,
                "return_indices": True,
            }
        )
        self.medium = orjson.dumps(
            {"input": rng.standard_normal((1, 16, 128, 128)).astype(np.float32).tolist(), "kernel_size": 2}
        )
        self.large_x = rng.standard_normal((8, 64, 112, 112)).astype(np.float32)
        self.large_npy = npy(self.large_x)
        self.large_b64 = orjson.dumps(
            {"input": {"npy_base64": base64.b64encode(self.large_npy).decode()}, "kernel_size": 2, "stride": 2}
        )
        head_x = rng.standard_normal((32, 512, 7, 7)).astype(np.float32)
        self.head_b64 = orjson.dumps({"input": {"npy_base64": base64.b64encode(npy(head_x)).decode()}})


def compare(args: argparse.Namespace, w: Workloads, other: Path) -> None:
    """This checkout's service against another's, W1-W4, in turn in every round."""
    print(f"{'workload':<44} {'this':>12} {'other':>12} {'ratio':>7}")
    json_type, npy_type, npz_type = "application/json", "application/x-npy", "application/x-npz"
    with (
        server(SERVICE, args.threads) as (port, _),
        server(SERVICE, args.threads, other) as (other_port, _),
    ):
        if shutil.which("wrk"):
            for each in (port, other_port):
                wrk(each, w.tiny, 2)
            rounds = [[wrk(each, w.tiny, args.seconds) for each in (port, other_port)] for _ in range(args.rounds)]
            ours, theirs = (statistics.median(r[column]["rps"] for r in rounds) for column in range(2))
            print(f"{'W1 tiny max2d, 32 clients: requests/s':<44} {ours:12.0f} {theirs:12.0f} {theirs / ours:6.2f}x")
            each_round = ", ".join(f"{r[1]['rps'] / r[0]['rps']:.2f}x" for r in rounds)
            print(f"{'   other rps / this rps in each round':<44} {each_round}")
        else:
            print("W1 skipped: wrk is not installed (apt-get install wrk)")
        connection = http.client.HTTPConnection("127.0.0.1", port)
        other_connection = http.client.HTTPConnection("127.0.0.1", other_port)
        large_path = "/pool/max2d?kernel_size=2&stride=2"
        cases = [
            ("W2 medium JSON 1x16x128x128, one client", "/pool/max2d", w.medium, json_type, json_type),
            ("W3 large .npy body -> .npz, one client", large_path, w.large_npy, npy_type, npz_type),
            ("W3 large npy_base64 in JSON", "/pool/max2d", w.large_b64, json_type, json_type),
            ("W4 global-avg2d 32x512x7x7 npy_base64", "/pool/global-avg2d", w.head_b64, json_type, json_type),
        ]
        for name, path, body, content, accept in cases:
            ours, theirs = interleaved(
                [
                    lambda: post(connection, path, body, content, accept),  # noqa: B023
                    lambda: post(other_connection, path, body, content, accept),  # noqa: B023
                ],
                args.repeat,
            )
            print(f"{name + ' (ms)':<44} {ours:12.2f} {theirs:12.2f} {ours / theirs:6.2f}x")
        connection.close()
        other_connection.close()
    print("ratio: this checkout's time over the other's (W1: the other's rate over this one's); above 1 is slower")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--seconds", type=int, default=5, help="length of each W1 round")
    parser.add_argument("--rounds", type=int, default=3, help="W1 rounds, alternating between the servers")
    parser.add_argument("--against", type=Path, help="another checkout of the service to compare this one with")
    parser.add_argument(
        "--only", type=lambda text: set(text.lower().split(",")), default=set(WORKLOADS), help="e.g. w1,w3"
    )
    args = parser.parse_args()
    if not args.only <= set(WORKLOADS):
        parser.error(f"--only chooses from {', '.join(WORKLOADS)}")
    torch.set_num_threads(args.threads)
    print(f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__} on {args.threads} threads, {os.cpu_count()} cores")
    workloads = Workloads(np.random.default_rng(0))
    if args.against is not None:
        compare(args, workloads, args.against.resolve())
        return
    print(f"{'workload':<44} {'service':>16} {'floor':>16} {'ratio':>7}")
    tiny, medium, large_x = workloads.tiny, workloads.medium, workloads.large_x
    large_npy, large_b64, head_b64 = workloads.large_npy, workloads.large_b64, workloads.head_b64

    if "w1" in args.only and shutil.which("wrk"):
        # Rounds alternate between the servers, so a slow spell of a shared machine
        # falls on all of them; the medians of the rounds are compared.
        with (
            otlp_sink() as sink,
            server("app", args.threads) as (base_port, _),
            server(SERVICE, args.threads) as (port, _),
            server("minimal", args.threads) as (minimal_port, _),
            server(SERVICE, args.threads, environment={"OTEL_EXPORTER_OTLP_ENDPOINT": sink}) as (traced, _),
            server(SERVICE, args.threads, environment={"POOL_MAX_BATCH": "1"}) as (unbatched, _),
        ):
            ports = (base_port, port, minimal_port, traced, unbatched)
            for each in ports:
                wrk(each, tiny, 2)
            rounds = [[wrk(each, tiny, args.seconds) for each in ports] for _ in range(args.rounds)]
            # One client: what a lone request waits, with batching and without.
            lone = [[wrk(each, tiny, args.seconds, connections=1) for each in (port, unbatched)] for _ in range(2)]
        base, ours, minimal, with_traces, alone = (
            {key: statistics.median(r[column][key] for r in rounds) for key in ("rps", "p50", "p99")}
            for column in range(5)
        )
        print(
            f"{'W1 tiny max2d, 32 clients: requests/s':<44} {ours['rps']:10.0f} {'':<5} {base['rps']:10.0f} "
            f"{'':<5} {ours['rps'] / base['rps']:6.2f}x  (target >= 0.9x)"
        )
        latencies = f"{ours['p50']:5.2f} / {ours['p99']:<6.2f}    {base['p50']:5.2f} / {base['p99']:<6.2f}"
        print(f"{'   p50 / p99 latency (ms)':<44} {latencies}")
        each_round = ", ".join(f"{r[1]['rps'] / r[0]['rps']:.2f}x" for r in rounds)
        print(f"{'   ratio in each round':<44} {each_round}")
        print(
            f"{'   reference: FastAPI + max_pool2d, no checks':<44} {minimal['rps']:10.0f} {'':<5} "
            f"{base['rps']:10.0f} {'':<5} {minimal['rps'] / base['rps']:6.2f}x"
        )
        print(
            f"{'   each request its own torch call (no batch)':<44} {alone['rps']:10.0f} {'':<5} "
            f"{base['rps']:10.0f} {'':<5} {alone['rps'] / base['rps']:6.2f}x"
        )
        one = [statistics.median(r[column]["p50"] for r in lone) for column in range(2)]
        print(f"{'   one client, p50 (ms): batching / none':<44} {one[0]:10.2f} {'':<5} {one[1]:10.2f}")
        print(
            f"{'   traced (OTLP to a local sink), over untraced':<44} {with_traces['rps']:10.0f} {'':<5} "
            f"{ours['rps']:10.0f} {'':<5} {with_traces['rps'] / ours['rps']:6.2f}x"
        )
    elif "w1" in args.only:
        print("W1 skipped: wrk is not installed (apt-get install wrk)")
    tiny_x = np.array(orjson.loads(tiny)["input"], dtype=np.float32)
    tiny_message = infer_message("max2d", tiny_x, kernel_size=2, return_indices=True)
    grpc_port = free_port()
    if "grpc" in args.only:
        with server(SERVICE, args.threads, grpc_port=grpc_port):
            target = f"127.0.0.1:{grpc_port}"
            grpc_rate(target, tiny_message, 2)  # warm up
            rates = [grpc_rate(target, tiny_message, args.seconds) for _ in range(args.rounds)]
        print(
            f"{'W1 over gRPC, 32 calls in flight: calls/s':<44} {statistics.median(rates):10.0f}   "
            "(client: one grpc.aio process on the same cores)"
        )

    def floor_w2() -> bytes:
        document = orjson.loads(medium)
        x = torch.from_numpy(np.array(document["input"], dtype=np.float32))
        out = F.max_pool2d(x, 2).numpy()
        return orjson.dumps({"output": out}, option=orjson.OPT_SERIALIZE_NUMPY)

    def floor_w3_raw() -> bytes:
        x = torch.from_numpy(np.load(io.BytesIO(large_npy)))
        out = io.BytesIO()
        np.savez(out, output=F.max_pool2d(x, 2, 2).numpy())
        return out.getvalue()

    def floor_base64(body: bytes, pool: Callable[[torch.Tensor], torch.Tensor]) -> bytes:
        document = orjson.loads(body)
        raw = pybase64.b64decode(document["input"]["npy_base64"])
        x = torch.from_numpy(np.load(io.BytesIO(raw)))
        answer = pybase64.b64encode(npy(pool(x).numpy())).decode()
        return orjson.dumps({"output": {"npy_base64": answer}})

    json_type, npy_type, npz_type = "application/json", "application/x-npy", "application/x-npz"
    with (
        server("transport", args.threads) as (transport_port, _),
        server(SERVICE, args.threads, grpc_port=grpc_port) as (port, _),
        raw_transport() as raw_port,
        torch.inference_mode(),
    ):
        bare = http.client.HTTPConnection("127.0.0.1", transport_port)
        raw = http.client.HTTPConnection("127.0.0.1", raw_port)
        connection = http.client.HTTPConnection("127.0.0.1", port)

        def measure(floor: Callable[[], object], body: bytes, path: str, content: str, accept: str) -> list[float]:
            """Medians of the service, its floor, HTTP alone and a raw socket (each moving the
            same body in and as many bytes out as the service answers), in turn in each round."""
            extra = {"x-answer-bytes": str(len(post(connection, path, body, content, accept)))}
            return interleaved(
                [
                    lambda: post(connection, path, body, content, accept),
                    floor,
                    lambda: post(bare, "/", body, content, json_type, extra),
                    lambda: post(raw, "/", body, content, json_type, extra),
                ],
                args.repeat,
            )

        if "w2" in args.only:
            ours, floor, transport, _ = measure(floor_w2, medium, "/pool/max2d", json_type, json_type)
            line("W2 medium JSON 1x16x128x128, one client", ours, floor, "ms", "<= 1.2x", transport)
        if "w3" in args.only:
            large_path = "/pool/max2d?kernel_size=2&stride=2"
            post(connection, large_path, large_npy, npy_type, npz_type)
            ours, floor, transport, raw_ms = measure(floor_w3_raw, large_npy, large_path, npy_type, npz_type)
            line("W3 large .npy body -> .npz, one client", ours, floor, "ms", "none", transport)
            # The physical floor: the bytes over a raw socket, and max_pool2d alone on a tensor in hand.
            large_tensor = torch.from_numpy(large_x)
            (pooling,) = interleaved([lambda: F.max_pool2d(large_tensor, 2, 2)], args.repeat)
            physical = raw_ms + pooling
            print(
                f"{'   physical floor: raw socket + max_pool2d':<44} {raw_ms:10.2f} ms    {physical:10.2f} ms    "
                f"{ours / physical:6.2f}x  (target <= 1.15x)"
            )
            grpc_w3 = grpc_unary(f"127.0.0.1:{grpc_port}")
            large_message = infer_message("max2d", large_x, kernel_size=2, stride=2)
            grpc_w3(large_message)
            over_grpc, over_rest, floor = interleaved(
                [
                    lambda: grpc_w3(large_message),
                    lambda: post(connection, large_path, large_npy, npy_type, npz_type),
                    floor_w3_raw,
                ],
                args.repeat,
            )
            line("W3 over gRPC, raw contents, one client", over_grpc, floor, "ms", "none: see the README")
            print(f"{'   gRPC over REST .npy, same run':<44} {over_grpc / over_rest:10.2f}x")
            w3_b64 = lambda: floor_base64(large_b64, lambda x: F.max_pool2d(x, 2, 2))  # noqa: E731
            ours, floor, transport, _ = measure(w3_b64, large_b64, "/pool/max2d", json_type, json_type)
            line("W3 large npy_base64 in JSON", ours, floor, "ms", "<= 1.6x", transport)
            n, size = args.repeat, large_x.nbytes
            memory_growth(args.threads, large_path, large_npy, (npy_type, npz_type), n, size, "W3 .npy", "<= 2x")
            memory_growth(args.threads, "/pool/max2d", large_b64, JSON_TYPES, n, size, "W3 npy_base64", "<= 3x")
        if "w4" in args.only:
            w4 = lambda: floor_base64(head_b64, lambda x: F.adaptive_avg_pool2d(x, 1))  # noqa: E731
            ours, floor, transport, _ = measure(w4, head_b64, "/pool/global-avg2d", json_type, json_type)
            line("W4 global-avg2d 32x512x7x7 npy_base64", ours, floor, "ms", "<= 1.8x", transport)
        connection.close()
        bare.close()
        raw.close()


def memory_growth(
    threads: int, path: str, body: bytes, types: tuple[str, str], repeat: int, tensor_bytes: int, name: str, target: str
) -> None:
    """Prints how far a fresh server's resident memory rises while it answers its first
    request of the workload (after a small one, which loads the code), then its peak over
    `repeat` more and what it holds after them (what the allocator keeps for the next),
    against the size of the tensor."""
    with server(SERVICE, threads) as (port, pid):
        connection = http.client.HTTPConnection("127.0.0.1", port)
        post(connection, "/pool/max2d", b'{"input": [[[[1, 2], [3, 4]]]], "kernel_size": 2}', *JSON_TYPES)
        before = memory_kib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # restart the peak (VmHWM) from here
        post(connection, path, body, *types)
        first = memory_kib(pid, "VmHWM") - before
        for _ in range(repeat):
            post(connection, path, body, *types)
        peak, held = memory_kib(pid, "VmHWM") - before, memory_kib(pid, "VmRSS") - before
        connection.close()
    tensor_mb = tensor_bytes / 2**20
    for what, kib, aim in (
        (f"{name}: memory growth of one request", first, f"  (target {target} the tensor)"),
        (f"   peak over {repeat} more", peak, ""),
        ("   held after them", held, ""),
    ):
        mib = kib / 1024
        print(f"{what:<44} {mib:10.1f} {'MiB':<5} {tensor_mb:10.1f} {'MiB':<5} {mib / tensor_mb:6.2f}x{aim}")


@contextmanager
def raw_transport() -> Iterator[int]:
    """The port of `benchmarks.raw_transport`: a plain socket, the physical floor."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.raw_transport", str(port)], cwd=ROOT)
    try:
        listening(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
