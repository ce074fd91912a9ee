"""The OpenAPI document as generators read it: TypeScript types generated with
openapi-typescript from a running server, a typed program (clients/typescript/example.ts) that
calls max2d as JSON, the binary form and the protocol's infer, checked by `tsc` with no casts,
then compiled and run against the server; and mistakes that the types must reject.

Skipped where npm is missing; failed instead when `CI` is set."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.operations import OPERATIONS

HERE = Path(__file__).resolve().parent.parent / "clients" / "typescript"
GENERATED = HERE / "generated"

RUNNER = """
import { describe, infer, max2d, max2dBinary, binaryQuery } from "./out/example.js";
const [base, npy] = process.argv.slice(2);
const bytes = new Uint8Array(Buffer.from(npy, "base64"));
const binary = await max2dBinary(base, bytes, binaryQuery);
let problem = null;
try {
  await max2dBinary(base, bytes, { kernel_size: 0 });
} catch (error) {
  problem = { status: error.status, detail: error.problem.detail, requestId: error.requestId };
}
console.log(JSON.stringify({
  json: await max2d(base),
  binary: Buffer.from(binary).toString("base64"),
  infer: await infer(base),
  described: await describe(base),
  problem,
}));
"""

MISTAKES = """
import createClient from "openapi-fetch";
import type { paths } from "./schema";
const pool = createClient<paths, `${string}/${string}json`>({ baseUrl: "http://127.0.0.1:8000" });
await pool.POST("/pool/max2d", { body: { input: [[1, 2]], kernal_size: 2 } });
await pool.POST("/pool/avg2d", { body: { input: [[1, 2]], kernel_size: 2, padding: "sideways" } });
const query: NonNullable<paths["/pool/max2d"]["post"]["parameters"]["query"]> = { return_indices: "yes" };
await pool.POST("/v2/models/{op}/infer", {
  params: { path: { op: "max2d" } },
  body: { inputs: [{ name: "input", shape: [2], datatype: "FP33" }] },
});
"""


def _npm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["npm", *args], cwd=HERE, capture_output=True, text=True, timeout=timeout)


def _npx(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["npx", "--no-install", *args], cwd=HERE, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def generated(server: str) -> Path:
    if shutil.which("npm") is None:
        if os.environ.get("CI"):
            pytest.fail("npm is not installed")
        pytest.skip("npm is not installed")
    installed = _npm("ci", "--no-audit", "--no-fund")
    assert installed.returncode == 0, installed.stderr
    GENERATED.mkdir(exist_ok=True)
    _npx("openapi-typescript", f"{server}/openapi.json", "-o", str(GENERATED / "schema.d.ts"))
    return GENERATED / "schema.d.ts"


def test_the_typed_program_checks_with_no_casts(generated):
    _npx("tsc", "--noEmit", "-p", ".")
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", (HERE / "example.ts").read_text(), flags=re.S)
    assert not re.search(r"\bas\b(?! const)|\bany\b|<\w+>\s*\w", code), "no casts"


def test_the_types_reject_mistakes(generated):
    (GENERATED / "mistakes.ts").write_text(MISTAKES)
    done = _npx(
        "tsc", "--noEmit", "--strict", "--target", "ES2022", "--module", "ES2022", "--moduleResolution", "bundler",
        "--lib", "ES2022,DOM", str(GENERATED / "mistakes.ts"), check=False,
    )  # fmt: skip
    errors = [line for line in done.stdout.splitlines() if "error TS" in line]
    assert len(errors) == 4, done.stdout
    assert "'kernal_size' does not exist" in errors[0]
    assert '"sideways"' in errors[1]
    assert "'string' is not assignable to type 'boolean" in errors[2]
    assert '"FP33"' in errors[3]


def test_the_compiled_program_gets_torchs_answers(generated, server):
    _npx("tsc", "-p", ".", "--noEmit", "false", "--outDir", str(GENERATED / "out"))
    (GENERATED / "run.mjs").write_text(RUNNER)
    x = np.random.default_rng(9).standard_normal((1, 2, 6, 5)).astype(np.float32)
    npy = io.BytesIO()
    np.save(npy, x)
    done = subprocess.run(
        ["node", str(GENERATED / "run.mjs"), server, base64.b64encode(npy.getvalue()).decode()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert answers["json"] == {
        "shape": [1, 1, 2, 2],
        "output": [[[[6.0, 8.0], [3.0, 4.0]]]],
        "indices": [[[[5, 7], [8, 15]]]],
    }
    with np.load(io.BytesIO(base64.b64decode(answers["binary"]))) as archive:
        padded = F.pad(torch.from_numpy(x), (0, 1, 1, 1), value=-torch.inf)  # "same" for (3, 2), stride 1
        want, want_indices = F.max_pool2d(padded, (3, 2), 1, return_indices=True)
        np.testing.assert_array_equal(archive["output"], want.numpy())
        assert archive["indices"].shape == want_indices.shape
    assert answers["infer"] == {"shape": [1, 1, 1, 1], "data": [4.0]}
    described = answers["described"]
    assert described["inputs"] == ["input"] and "kernel_size" in described["parameters"]
    assert described["inferences"] >= 2 and described["models"] == len(OPERATIONS)
    assert answers["problem"]["status"] == 422 and "kernel_size" in answers["problem"]["detail"]
    assert len(answers["problem"]["requestId"]) == 32
