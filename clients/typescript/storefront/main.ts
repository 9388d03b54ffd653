// The demo storefront: every list a shop shows, through the generated client.
import { createRecsysClient, type RecommendationList, type RecommendedItem } from "../src/index";

const query = new URLSearchParams(location.search);
const api = createRecsysClient({ baseUrl: query.get("api") ?? location.origin });
const PAGE = 5;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const state = { user: query.get("user") ?? "17850", offset: 0 };

function setStatus(text: string, error = false): void {
  const el = $("status");
  el.textContent = text;
  el.className = error ? "error" : "";
}

/** Fill a list; each item is a button that records a click and shows similar items. */
function render(listId: string, items: RecommendedItem[]): void {
  const ul = $(listId);
  ul.replaceChildren(
    ...items.map((it) => {
      const li = document.createElement("li");
      li.className = "item";
      li.dataset.itemId = it.item_id ?? "";
      const button = document.createElement("button");
      const title = document.createElement("div");
      title.className = "title";
      title.textContent = it.title ?? it.item_id ?? "";
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = `${it.item_id}${it.price != null ? ` · £${it.price.toFixed(2)}` : ""}`;
      button.append(title, meta);
      button.addEventListener("click", () => void clicked(it.item_id ?? ""));
      li.append(button);
      return li;
    }),
  );
}

function fail(what: string, error: unknown, response: Response): never {
  const description = (error as { description?: string } | undefined)?.description;
  throw new Error(`${what}: ${response.status} ${description ?? ""}`.trim());
}

async function loadRecommendations(): Promise<void> {
  const { data, error, response } = await api.GET("/v1/users/{user_id}/recommendations", {
    params: { path: { user_id: state.user }, query: { n: PAGE, offset: state.offset } },
  });
  if (!data) fail("recommendations", error, response);
  showList(data, response);
}

function showList(data: RecommendationList, response: Response): void {
  render("recs-list", data.items);
  $("recs-route").textContent = `route ${data.route}${data.cached ? ", cached" : ""}`;
  $("recs-page").textContent = `page ${state.offset / PAGE + 1}`;
  ($("recs-prev") as HTMLButtonElement).disabled = state.offset === 0;
  const revalidated = response.headers.get("X-Recsys-Revalidated") === "304";
  $("recs-http").textContent = revalidated ? "304 Not Modified (kept the list)" : `${response.status}`;
}

async function loadPopular(): Promise<void> {
  const { data, error, response } = await api.GET("/v1/popular", { params: { query: { n: PAGE } } });
  if (!data) fail("popular", error, response);
  render("popular-list", data.items);
}

async function clicked(itemId: string): Promise<void> {
  try {
    const { data, error, response } = await api.POST("/v1/events", {
      body: { user_id: state.user, item_id: itemId, type: "click" },
    });
    if (!data) fail("click", error, response);
    $("click-status").textContent = `click on ${itemId} recorded (${response.status})`;
    const similar = await api.GET("/v1/items/{item_id}/similar", {
      params: { path: { item_id: itemId }, query: { n: PAGE } },
    });
    if (!similar.data) fail("similar", similar.error, similar.response);
    $("similar-of").textContent = `like ${itemId}`;
    render("similar-list", similar.data.items);
    await loadRecommendations(); // the click invalidated the user's list: revalidate it
    setStatus("ready");
  } catch (e) {
    setStatus(`error: ${(e as Error).message}`, true);
  }
}

async function run(step: () => Promise<void>): Promise<void> {
  setStatus("loading");
  try {
    await step();
    setStatus("ready");
  } catch (e) {
    setStatus(`error: ${(e as Error).message}`, true);
  }
}

($("user") as HTMLInputElement).value = state.user;
$("load").addEventListener("click", () => {
  state.user = ($("user") as HTMLInputElement).value.trim();
  state.offset = 0;
  void run(loadRecommendations);
});
$("recs-next").addEventListener("click", () => {
  state.offset += PAGE;
  void run(loadRecommendations);
});
$("recs-prev").addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - PAGE);
  void run(loadRecommendations);
});
$("recs-revalidate").addEventListener("click", () => void run(loadRecommendations));
void run(async () => {
  await Promise.all([loadRecommendations(), loadPopular()]);
});
