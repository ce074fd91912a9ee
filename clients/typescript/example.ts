// A typed program against the pooling service, with types generated from its OpenAPI document
// (`npm run generate`, then `npm run check`) and openapi-fetch: no casts, and a misspelled
// parameter or a wrong value is a compile error.
import createClient from "openapi-fetch";
import type { components, paths } from "./generated/schema";

type Problem = components["schemas"]["Problem"];
type Max2dQuery = NonNullable<paths["/pool/max2d"]["post"]["parameters"]["query"]>;

// JSON media types only (the answers' application/json and the errors' application/problem+json);
// the binary form goes through fetch below.
function service(base: string) {
  return createClient<paths, `${string}/${string}json`>({ baseUrl: base });
}

export class PoolError extends Error {
  constructor(
    readonly status: number,
    readonly problem: Problem,
    readonly requestId: string | null,
  ) {
    super(`${status} ${problem.title}: ${problem.detail}`);
  }
}

/** The README's max2d example as JSON: the output's values and the argmax indices. */
export async function max2d(base: string): Promise<{ shape: number[]; output: unknown; indices: unknown }> {
  const { data, error, response } = await service(base).POST("/pool/max2d", {
    body: {
      input: [[[[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]]],
      kernel_size: 2,
      return_indices: true,
    },
  });
  if (error) throw new PoolError(response.status, error, response.headers.get("x-request-id"));
  return { shape: data.shape, output: data.output, indices: data.indices };
}

/** The binary form: a raw .npy body, the parameters in the query, an .npz back. */
export async function max2dBinary(base: string, npy: Uint8Array<ArrayBuffer>, query: Max2dQuery): Promise<ArrayBuffer> {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    // Lists as JSON (`kernel_size=[3,2]`, `padding=[[0,1],[1,0]]`), which the service reads.
    if (value !== undefined && value !== null) search.set(name, typeof value === "object" ? JSON.stringify(value) : String(value));
  }
  const response = await fetch(`${base}/pool/max2d?${search}`, {
    method: "POST",
    body: npy,
    headers: { "content-type": "application/x-npy", accept: "application/x-npz" },
  });
  if (!response.ok) {
    const problem: Problem = await response.json();
    throw new PoolError(response.status, problem, response.headers.get("x-request-id"));
  }
  return response.arrayBuffer();
}

/** The Open Inference Protocol's infer: the model is the op. */
export async function infer(base: string): Promise<{ shape: number[]; data: unknown[] | undefined }> {
  const { data, error, response } = await service(base).POST("/v2/models/{op}/infer", {
    params: { path: { op: "max2d" } },
    body: {
      parameters: { kernel_size: 2, stride: [1, 1] },
      inputs: [{ name: "input", shape: [1, 1, 2, 2], datatype: "FP32", data: [1, 2, 3, 4] }],
      outputs: [{ name: "output" }],
    },
  });
  if (error) throw new PoolError(response.status, error, response.headers.get("x-request-id"));
  const [output] = data.outputs;
  return { shape: output.shape, data: output.data };
}

export const binaryQuery: Max2dQuery = { kernel_size: [3, 2], stride: 1, return_indices: true, padding: "same" };

/** The protocol's model configuration, statistics and repository index. */
export async function describe(base: string): Promise<{ inputs: string[]; parameters: string[]; inferences: number; models: number }> {
  const pool = service(base);
  const config = await pool.GET("/v2/models/{op}/config", { params: { path: { op: "max2d" } } });
  if (config.error) throw new PoolError(config.response.status, config.error, config.response.headers.get("x-request-id"));
  const stats = await pool.GET("/v2/models/{op}/versions/{version}/stats", {
    params: { path: { op: "max2d", version: "1" } },
  });
  if (stats.error) throw new PoolError(stats.response.status, stats.error, stats.response.headers.get("x-request-id"));
  const index = await pool.POST("/v2/repository/index", {});
  if (index.error) throw new PoolError(index.response.status, index.error, index.response.headers.get("x-request-id"));
  return {
    inputs: config.data.input.map((tensor) => tensor.name),
    parameters: Object.keys(config.data.parameters),
    inferences: stats.data.model_stats[0].inference_count,
    models: index.data.filter((model) => model.state === "READY").length,
  };
}
