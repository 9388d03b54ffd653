// The recsys client: openapi-fetch over the types openapi-typescript generated from the
// service's OpenAPI document (src/schema.ts; regenerate with `npm run generate`).
import createClient, { type ClientOptions, type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema";

export type { components, operations, paths } from "./schema";

/** The schemas of the document, by name: `Schemas["ErrorOut"]`. */
export type Schemas = components["schemas"];

/** The body of an error answer (every 4xx/5xx has this shape). */
export type ApiError = Schemas["ErrorOut"];

/** A recommendation list (user, session, similar and popular answers share it). */
export type RecommendationList =
  paths["/v1/users/{user_id}/recommendations"]["get"]["responses"][200]["content"]["application/json"];

/** One item of a recommendation list. */
export type RecommendedItem = RecommendationList["items"][number];

/** An event as `POST /v1/events` takes it. */
export type EventIn = Schemas["EventIn"];

export interface RecsysClientOptions extends ClientOptions {
  /** An API key (`X-API-Key`), when the service requires one (RECSYS_API_KEYS). */
  apiKey?: string;
  /** Revalidate GET lists with their ETag (see `etagCache`); default true. */
  revalidate?: boolean;
}

/**
 * Remembers each GET answer's ETag and body; the next GET of the same URL sends
 * `If-None-Match` and a `304 Not Modified` is answered from memory, as a 200 whose
 * `X-Recsys-Revalidated` header is `304`. Bodies are kept for at most `maxEntries` URLs.
 *
 * A list shown right after an event should be revalidated rather than taken from the
 * browser's cache (which keeps it for `max-age`); a request that carries `If-None-Match`
 * bypasses that cache, so the service decides.
 */
export function etagCache(maxEntries = 200): Middleware {
  const entries = new Map<string, { etag: string; body: string; type: string }>();
  return {
    async onRequest({ request }) {
      if (request.method !== "GET") return undefined;
      const hit = entries.get(request.url);
      if (hit && !request.headers.has("If-None-Match")) {
        request.headers.set("If-None-Match", hit.etag);
      }
      return request;
    },
    async onResponse({ request, response }) {
      if (request.method !== "GET") return undefined;
      const hit = entries.get(request.url);
      if (response.status === 304 && hit) {
        const headers = new Headers(response.headers);
        headers.set("Content-Type", hit.type);
        headers.set("X-Recsys-Revalidated", "304");
        return new Response(hit.body, { status: 200, headers });
      }
      const etag = response.headers.get("ETag");
      if (response.ok && etag) {
        entries.delete(request.url);
        if (entries.size >= maxEntries) entries.delete(entries.keys().next().value as string);
        const type = response.headers.get("Content-Type") ?? "application/json";
        entries.set(request.url, { etag, body: await response.clone().text(), type });
      }
      return response;
    },
  };
}

/**
 * A typed client: `api.GET(path, { params })`, `api.POST(path, { body })` ... answer
 * `{ data, error, response }`, with `data` and `error` typed from the OpenAPI document.
 */
export function createRecsysClient(options: RecsysClientOptions = {}) {
  const { apiKey, revalidate = true, headers, ...rest } = options;
  const merged = new Headers(headers as HeadersInit | undefined);
  if (apiKey) merged.set("X-API-Key", apiKey);
  const client = createClient<paths>({ ...rest, headers: Object.fromEntries(merged) });
  if (revalidate) client.use(etagCache());
  return client;
}

export type RecsysClient = ReturnType<typeof createRecsysClient>;
