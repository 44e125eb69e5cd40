// SPDX-License-Identifier: Apache-2.0
// The whatisup dashboard: plain TypeScript + DOM over grpc-web, on the gateway's own origin.
// State comes from one live StreamEvents subscription (no polling); unary calls do the actions.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { ChannelService, type Channel } from "whatisup-gen/whatisup/v1/channels_pb";
import { EventService, type Event } from "whatisup-gen/whatisup/v1/events_pb";
import { SandboxService } from "whatisup-gen/whatisup/v1/sandbox_pb";
import { WebhookService, type WebhookDelivery } from "whatisup-gen/whatisup/v1/webhooks_pb";
import { BannerTracker } from "./banner";

// ---------- small DOM helpers ----------
const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el as T;
};
function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}
function setText(el: HTMLElement, text: string) {
  if (el.textContent !== text) el.textContent = text;
}
let toastTimer = 0;
function toast(msg: string) {
  const t = $("toast");
  t.textContent = msg;
  t.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = window.setTimeout(() => t.classList.remove("show"), 4000);
}
function errText(e: unknown): string {
  if (e instanceof ConnectError) return e.rawMessage || Code[e.code];
  return e instanceof Error ? e.message : String(e);
}
const tsDate = (t?: Timestamp) => (t ? timestampDate(t) : undefined);

// ---------- settings and the API key ----------
interface Settings {
  reconnecting_banner_secs: number;
  server_time: string;
}
let settings: Settings = { reconnecting_banner_secs: 30, server_time: new Date().toISOString() };
/** Server clock minus ours: durations are measured against the server's timestamps. */
let skewMs = 0;
const serverNow = () => Date.now() + skewMs;

const KEY_NAME = "whatisup.apiKey";
function storedKey(): string | null {
  return sessionStorage.getItem(KEY_NAME) ?? localStorage.getItem(KEY_NAME);
}
function storeKey(key: string, remember: boolean) {
  sessionStorage.setItem(KEY_NAME, key);
  if (remember) localStorage.setItem(KEY_NAME, key);
}
function forgetKey() {
  sessionStorage.removeItem(KEY_NAME);
  localStorage.removeItem(KEY_NAME);
}

let apiKey = "";
const auth: Interceptor = (next) => async (req) => {
  req.header.set("authorization", `Bearer ${apiKey}`);
  return next(req);
};
const transport = createGrpcWebTransport({ baseUrl: location.origin, interceptors: [auth] });
const channels = createClient(ChannelService, transport);
const events = createClient(EventService, transport);
const sandbox = createClient(SandboxService, transport);
const webhooks = createClient(WebhookService, transport);

// ---------- state ----------
const byId = new Map<string, Channel>();
let selected: string | null = null;
const banner = new BannerTracker();
let streamAbort: AbortController | null = null;
let tailAbort: AbortController | null = null;
const tail: Event[] = [];
const TAIL_MAX = 200;
let qrExpires: Date | null = null;

// ---------- sign-in ----------
async function signIn(key: string): Promise<void> {
  apiKey = key;
  // A cheap authenticated call proves the key before anything is shown.
  const list = await channels.listChannels({ limit: 100 });
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  $("stream-state").hidden = false;
  setText($("mode"), key.startsWith("zpk_test_") ? "test mode" : "live");
  showView("channels");
  byId.clear();
  for (const c of list.data) byId.set(c.id, c);
  renderList();
  startStream();
}

function signOut(message = "") {
  forgetKey();
  apiKey = "";
  streamAbort?.abort();
  tailAbort?.abort();
  byId.clear();
  selected = null;
  banner.reset();
  renderBanner();
  for (const id of ["nav", "sign-out", "stream-state", "view-channels", "view-webhooks", "detail"]) $(id).hidden = true;
  $("sign-in").hidden = false;
  setText($("sign-in-error"), message);
  $<HTMLInputElement>("api-key").value = "";
}

function onAuthError(e: unknown): boolean {
  if (e instanceof ConnectError && e.code === Code.Unauthenticated) {
    signOut(`The gateway refused the key: ${e.rawMessage}`);
    return true;
  }
  return false;
}

/** Runs an action, reporting its failure. */
async function act(what: string, f: () => Promise<unknown>) {
  try {
    await f();
  } catch (e) {
    if (!onAuthError(e)) toast(`${what} failed: ${errText(e)}`);
  }
}

// ---------- the live stream ----------
function startStream() {
  streamAbort?.abort();
  const ctrl = new AbortController();
  streamAbort = ctrl;
  void (async () => {
    let cursor = "";
    let delay = 500;
    while (!ctrl.signal.aborted) {
      const state = $("stream-state");
      try {
        const resume = cursor;
        const stream = events.streamEvents(
          { afterCursor: cursor },
          {
            signal: ctrl.signal,
            // The subscription is open once the headers arrive: a list read now misses nothing that the
            // stream will not bring (and older events are ignored against status_since).
            onHeader: () => {
              state.dataset.live = "true";
              setText(state, "Live");
              if (!resume) void refreshList();
            },
          },
        );
        for await (const item of stream) {
          state.dataset.live = "true";
          setText(state, "Live");
          delay = 500;
          cursor = item.cursor;
          if (item.event) onEvent(item.event);
        }
      } catch (e) {
        if (ctrl.signal.aborted) return;
        if (onAuthError(e)) return;
      }
      if (ctrl.signal.aborted) return;
      state.dataset.live = "false";
      setText(state, "Stream interrupted, reconnecting…");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10_000);
      // Anything missed while the stream was down is replayed after `cursor`.
    }
  })();
}

async function refreshList() {
  try {
    const list = await channels.listChannels({ limit: 100 });
    for (const c of list.data) byId.set(c.id, c);
    renderList();
  } catch (e) {
    onAuthError(e);
  }
}

function str(v: unknown): string | undefined {
  return typeof v === "string" ? v : undefined;
}

function onEvent(ev: Event) {
  const ch = byId.get(ev.channelId);
  const d = ev.data ?? {};
  const at = tsDate(ev.occurredAt);
  switch (ev.event) {
    case "channel.status_changed": {
      const to = str(d.to);
      if (!ch || !to) {
        // A channel this page has not seen (created elsewhere): fetch it.
        if (!ch) void fetchChannel(ev.channelId);
        break;
      }
      // An event older than what the list already shows changes nothing (the list may be newer than the stream).
      const since = tsDate(ch.statusSince);
      if (since && at && at < since) break;
      ch.status = to;
      ch.statusReason = str(d.reason);
      ch.statusSince = ev.occurredAt;
      break;
    }
    case "channel.connected":
      if (ch) ch.phoneNumber = str(d.phone_number) ?? ch.phoneNumber;
      break;
    case "qr.updated":
      if (ev.channelId === selected) void loadQr(false);
      break;
    case "pair_code.updated":
      if (ev.channelId === selected) {
        setText($("pair-code"), `Pair code: ${str(d.code) ?? ""}`);
      }
      break;
  }
  if (ch) renderList();
}

async function fetchChannel(id: string) {
  try {
    const c = await channels.getChannel({ id });
    if (!c.deletedAt) {
      byId.set(c.id, c);
      renderList();
    }
  } catch {
    // Not visible to this key (another mode): ignore.
  }
}

// ---------- channel list and detail ----------
function badge(status: string): HTMLSpanElement {
  return h("span", { class: "badge", "data-status": status }, status);
}

function renderList() {
  const ul = $("channel-list");
  const items = [...byId.values()]
    .filter((c) => !c.deletedAt)
    .sort((a, b) => (a.id < b.id ? 1 : -1));
  $("no-channels").hidden = items.length > 0;
  // Rebuilt in place, keyed by id, so focus and scroll stay where they are.
  const existing = new Map<string, HTMLLIElement>();
  for (const li of Array.from(ul.children) as HTMLLIElement[]) existing.set(li.dataset.id ?? "", li);
  items.forEach((c, i) => {
    let li = existing.get(c.id);
    if (!li) {
      const btn = h("button", { type: "button", class: "open" });
      btn.addEventListener("click", () => select(c.id));
      li = h("li", { "data-id": c.id }, btn);
    }
    existing.delete(c.id);
    const btn = li.querySelector("button.open") as HTMLButtonElement;
    const label = `${c.name} ${c.status}${c.phoneNumber ? " " + c.phoneNumber : ""}`;
    if (btn.dataset.label !== label) {
      btn.dataset.label = label;
      btn.replaceChildren(
        h("span", { class: "name" }, c.name),
        badge(c.status),
        h("span", { class: "sub" }, c.phoneNumber ? `${c.phoneNumber} · ${c.id}` : c.id),
      );
      btn.setAttribute("aria-label", `${c.name}, ${c.status}${c.phoneNumber ? ", " + c.phoneNumber : ""}`);
    }
    if (c.id === selected) li.setAttribute("aria-current", "true");
    else li.removeAttribute("aria-current");
    if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] ?? null);
  });
  for (const li of existing.values()) li.remove();
  banner.update([...byId.values()].filter((c) => !c.deletedAt));
  renderBanner();
  renderDetail();
}

function select(id: string) {
  const changed = selected !== id;
  selected = id;
  if (changed) {
    qrExpires = null;
    $("qr-figure").hidden = true;
    setText($("qr-note"), "");
    setText($("pair-code"), "");
    startTail(id);
  }
  renderList();
  $("detail").hidden = false;
  if (changed && byId.get(id)?.status === "qr") void loadQr(false);
  if (changed) $("detail-title").focus?.();
}

function renderDetail() {
  const c = selected ? byId.get(selected) : undefined;
  if (!c || c.deletedAt) {
    $("detail").hidden = true;
    return;
  }
  setText($("detail-title"), c.name);
  const st = $("detail-status");
  setText(st, c.status);
  st.dataset.status = c.status;
  setText($("detail-phone"), c.phoneNumber ? `Phone: ${c.phoneNumber}` : "");
  setText($("detail-id"), c.id);
  $<HTMLButtonElement>("btn-connect").disabled = !["pending", "disconnected", "failed"].includes(c.status);
  $<HTMLButtonElement>("btn-logout").disabled = !["connected", "reconnecting", "connecting"].includes(c.status);
  const connected = c.status === "connected";
  const paired = connected || c.status === "reconnecting";
  const pc = $("pair-connected");
  pc.hidden = !paired;
  pc.classList.toggle("ok", connected);
  pc.classList.toggle("warn", !connected);
  setText(
    pc,
    connected
      ? `Connected${c.phoneNumber ? " as " + c.phoneNumber : ""}`
      : paired
        ? `Paired${c.phoneNumber ? " as " + c.phoneNumber : ""}; reconnecting by itself…`
        : "",
  );
  $("pair-qr-block").hidden = paired;
  if (c.status !== "qr") {
    $("qr-figure").hidden = true;
    qrExpires = null;
  }
  if (c.status === "pending" && c.statusReason === "qr_timeout") {
    setText($("qr-note"), "The QR code expired unscanned. Press “Show QR code” to start again.");
  } else if (c.status !== "pending") {
    setText($("qr-note"), "");
  }
  $("sandbox").hidden = c.engine !== "sandbox";
  $<HTMLButtonElement>("sb-scan").disabled = c.status !== "qr";
  $<HTMLButtonElement>("sb-drop").disabled = c.status !== "connected";
  $<HTMLButtonElement>("sb-revoke").disabled = !["connected", "reconnecting", "connecting"].includes(c.status);
}

async function loadQr(start: boolean) {
  const id = selected;
  if (!id) return;
  try {
    const qr = await channels.getQr({ id, wait: start ? 10 : 2 });
    if (selected !== id) return;
    $<HTMLImageElement>("qr-img").src = qr.png;
    $("qr-figure").hidden = false;
    qrExpires = tsDate(qr.expiresAt) ?? null;
    tickCountdown();
  } catch (e) {
    if (onAuthError(e)) return;
    // No QR any more (connected meanwhile): the detail view already says so.
    if (e instanceof ConnectError && e.code === Code.FailedPrecondition) return;
    toast(`QR code: ${errText(e)}`);
  }
}

function tickCountdown() {
  const el = $("qr-countdown");
  if (!qrExpires || $("qr-figure").hidden) {
    setText(el, "");
    return;
  }
  const left = Math.max(0, Math.ceil((qrExpires.getTime() - serverNow()) / 1000));
  setText(el, left > 0 ? `Expires in ${left} s.` : "Expired; waiting for a new code…");
}

// ---------- the reconnecting banner ----------
function renderBanner() {
  const el = $("reconnecting-banner");
  const shown = banner.shown(serverNow(), settings.reconnecting_banner_secs * 1000);
  if (shown.length === 0) {
    if (!el.hidden) {
      el.hidden = true;
      el.replaceChildren();
      el.dataset.key = "";
    }
    return;
  }
  // Rewritten only when the set of channels changes: no flicker, no repeated announcements.
  const key = shown.map((c) => c.id).join(",");
  if (el.dataset.key !== key || el.hidden) {
    el.dataset.key = key;
    const title =
      shown.length === 1
        ? `Channel “${shown[0].name}” has been reconnecting for more than ${settings.reconnecting_banner_secs} s`
        : `${shown.length} channels have been reconnecting for more than ${settings.reconnecting_banner_secs} s`;
    el.replaceChildren(
      h("span", {}, title),
      h(
        "ul",
        {},
        ...shown.map((c) =>
          h("li", { "data-id": c.id }, `${c.name} (${c.id}${c.phoneNumber ? ", " + c.phoneNumber : ""})`),
        ),
      ),
    );
    el.hidden = false;
  }
}

// ---------- event tail ----------
function startTail(channelId: string) {
  tailAbort?.abort();
  const ctrl = new AbortController();
  tailAbort = ctrl;
  tail.length = 0;
  renderTail();
  void (async () => {
    // The channel's retained log, then live; kept to the last TAIL_MAX events.
    let cursor = "0";
    while (!ctrl.signal.aborted) {
      try {
        for await (const item of events.streamEvents({ channelId, afterCursor: cursor }, { signal: ctrl.signal })) {
          cursor = item.cursor;
          if (!item.event) continue;
          tail.unshift(item.event);
          if (tail.length > TAIL_MAX) tail.length = TAIL_MAX;
          scheduleTailRender();
        }
      } catch (e) {
        if (ctrl.signal.aborted || onAuthError(e)) return;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
}

let tailPending = false;
function scheduleTailRender() {
  if (tailPending) return;
  tailPending = true;
  requestAnimationFrame(() => {
    tailPending = false;
    renderTail();
  });
}

function renderTail() {
  const filter = $<HTMLInputElement>("tail-filter").value.trim().toLowerCase();
  const rows = tail
    .filter((e) => !filter || e.event.includes(filter) || JSON.stringify(e.data ?? {}).toLowerCase().includes(filter))
    .slice(0, 100)
    .map((e) => {
      const at = tsDate(e.occurredAt);
      return h(
        "li",
        { "data-event": e.event },
        h("time", { datetime: at?.toISOString() ?? "" }, at ? at.toLocaleTimeString() : ""),
        h("span", { class: "ev" }, e.event),
        ` #${e.sequence}`,
        h("pre", {}, JSON.stringify(e.data ?? {})),
      );
    });
  $("tail-list").replaceChildren(...rows);
}

// ---------- webhooks ----------
async function loadWebhooks() {
  try {
    const eps = await webhooks.listWebhookEndpoints({});
    const ul = $("endpoint-list");
    const sel = $<HTMLSelectElement>("dl-endpoint");
    const keep = sel.value;
    sel.replaceChildren(h("option", { value: "" }, "All endpoints"));
    ul.replaceChildren(
      ...eps.data.map((ep) => {
        sel.append(h("option", { value: ep.id }, ep.url));
        const del = h("button", { type: "button", class: "danger" }, "Delete");
        del.setAttribute("aria-label", `Delete endpoint ${ep.url}`);
        del.addEventListener("click", () =>
          act("Delete endpoint", async () => {
            if (!confirm(`Delete the endpoint ${ep.url}?`)) return;
            await webhooks.deleteWebhookEndpoint({ id: ep.id });
            await loadWebhooks();
          }),
        );
        return h(
          "li",
          { "data-id": ep.id },
          h("strong", {}, ep.url),
          " ",
          h("span", { class: "badge", "data-status": ep.enabled ? "connected" : "failed" }, ep.enabled ? "enabled" : `disabled${ep.disabledReason ? " (" + ep.disabledReason + ")" : ""}`),
          h("div", { class: "muted" }, `${ep.id} · events: ${ep.events.length ? ep.events.join(", ") : "all"}${ep.channelId ? " · channel " + ep.channelId : ""}`),
          del,
        );
      }),
    );
    sel.value = keep;
    await loadDeliveries();
  } catch (e) {
    if (!onAuthError(e)) toast(`Webhooks: ${errText(e)}`);
  }
}

async function loadDeliveries() {
  const list = await webhooks.listWebhookDeliveries({ endpointId: $<HTMLSelectElement>("dl-endpoint").value, limit: 50 });
  const tbody = $("deliveries").querySelector("tbody") as HTMLTableSectionElement;
  tbody.replaceChildren(
    ...list.data.map((d) => {
      const view = h("button", { type: "button" }, "Attempts");
      view.setAttribute("aria-label", `Attempts of ${d.event} ${d.id}`);
      view.addEventListener("click", () => act("Delivery", () => showDelivery(d.id)));
      const again = h("button", { type: "button" }, "Redeliver");
      again.setAttribute("aria-label", `Redeliver ${d.event} ${d.id}`);
      again.addEventListener("click", () =>
        act("Redeliver", async () => {
          await webhooks.redeliverWebhook({ id: d.id });
          toast(`Redelivery of ${d.id} queued`);
          await loadDeliveries();
        }),
      );
      return h(
        "tr",
        { "data-id": d.id },
        h("td", {}, d.event, h("div", { class: "muted" }, d.id)),
        h("td", {}, h("span", { class: "badge", "data-status": deliveryBadge(d.status) }, d.status)),
        h("td", { class: "attempts" }, String(d.attemptCount)),
        h("td", {}, d.lastHttpStatus !== undefined ? String(d.lastHttpStatus) : d.lastError ?? ""),
        h("td", {}, tsDate(d.createdAt)?.toLocaleString() ?? ""),
        h("td", {}, view, " ", again),
      );
    }),
  );
}

function deliveryBadge(s: string): string {
  return s === "success" ? "connected" : s === "failed" ? "failed" : "connecting";
}

async function showDelivery(id: string) {
  const d: WebhookDelivery = await webhooks.getWebhookDelivery({ id });
  setText($("delivery-title"), `Attempts of ${d.event} (${d.id}): ${d.status}`);
  const tbody = $("attempts").querySelector("tbody") as HTMLTableSectionElement;
  tbody.replaceChildren(
    ...d.attempts.map((a) =>
      h(
        "tr",
        {},
        h("td", {}, tsDate(a.attemptedAt)?.toLocaleString() ?? ""),
        h("td", {}, a.trigger),
        h("td", { class: "http" }, a.httpStatus !== undefined ? String(a.httpStatus) : "—"),
        h("td", {}, `${a.durationMs} ms`),
        h("td", {}, a.error ?? a.responseExcerpt ?? ""),
      ),
    ),
  );
  if (d.attempts.length === 0) tbody.append(h("tr", {}, h("td", { colspan: "5" }, "No attempt yet.")));
  $("delivery-detail").hidden = false;
  // The list beside it shows the same delivery's status.
  await loadDeliveries();
}

// ---------- views ----------
function showView(name: "channels" | "webhooks") {
  $("view-channels").hidden = name !== "channels";
  $("view-webhooks").hidden = name !== "webhooks";
  for (const b of Array.from($("nav").querySelectorAll("button"))) {
    if (b.dataset.view === name) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  if (name === "webhooks") void loadWebhooks();
}

// ---------- wiring ----------
function wire() {
  $("sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $<HTMLInputElement>("api-key").value.trim();
    const remember = $<HTMLInputElement>("remember").checked;
    setText($("sign-in-error"), "");
    signIn(key)
      .then(() => storeKey(key, remember))
      .catch((err) => {
        apiKey = "";
        setText($("sign-in-error"), `Sign-in failed: ${errText(err)}`);
      });
  });
  $("sign-out").addEventListener("click", () => signOut());
  for (const b of Array.from($("nav").querySelectorAll("button"))) {
    b.addEventListener("click", () => showView(b.dataset.view as "channels" | "webhooks"));
  }
  $("create-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $<HTMLInputElement>("new-name");
    void act("Create channel", async () => {
      const c = await channels.createChannel({ name: input.value.trim() });
      byId.set(c.id, c);
      input.value = "";
      select(c.id);
    });
  });
  const withSelected = (what: string, f: (id: string) => Promise<unknown>) => () => {
    const id = selected;
    if (id) void act(what, () => f(id));
  };
  const applyChannel = (c?: Channel) => {
    if (c) {
      const cur = byId.get(c.id);
      const a = tsDate(cur?.statusSince);
      const b = tsDate(c.statusSince);
      if (!cur || !a || !b || b >= a) byId.set(c.id, c);
      renderList();
    }
  };
  $("btn-connect").addEventListener("click", withSelected("Connect", async (id) => applyChannel(await channels.connectChannel({ id }))));
  $("btn-logout").addEventListener("click", withSelected("Log out", async (id) => applyChannel(await channels.logoutChannel({ id }))));
  $("btn-delete").addEventListener(
    "click",
    withSelected("Delete", async (id) => {
      if (!confirm("Delete this channel? Its connection is stopped.")) return;
      await channels.deleteChannel({ id });
      byId.delete(id);
      selected = null;
      tailAbort?.abort();
      renderList();
    }),
  );
  $("btn-qr").addEventListener("click", () => void loadQr(true));
  $("pair-code-form").addEventListener("submit", (e) => {
    e.preventDefault();
    withSelected("Pair code", async (id) => {
      const r = await channels.requestPairCode({ id, phoneNumber: $<HTMLInputElement>("pair-phone").value.trim() });
      setText($("pair-code"), `Pair code: ${r.code}`);
    })();
  });
  $("sb-scan").addEventListener("click", withSelected("Scan", async (id) => applyChannel((await sandbox.scan({ id })).channel)));
  $("sb-drop").addEventListener(
    "click",
    withSelected("Drop", async (id) => {
      const ms = Number($<HTMLInputElement>("sb-drop-ms").value) || 5000;
      applyChannel((await sandbox.drop({ id, durationMs: ms })).channel);
    }),
  );
  $("sb-revoke").addEventListener("click", withSelected("Revoke", async (id) => applyChannel((await sandbox.revoke({ id })).channel)));
  $("sb-inbound").addEventListener("submit", (e) => {
    e.preventDefault();
    withSelected("Inbound message", async (id) => {
      const r = await sandbox.inbound({
        id,
        from: $<HTMLInputElement>("sb-from").value.trim(),
        text: $<HTMLInputElement>("sb-text").value,
      });
      toast(`Inbound message ${r.messageId ?? ""} arrived`);
    })();
  });
  $("tail-filter").addEventListener("input", () => renderTail());
  $("endpoint-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void act("Add endpoint", async () => {
      const evs = $<HTMLInputElement>("ep-events")
        .value.split(",")
        .map((s) => s.trim())
        .filter(Boolean);
      const ep = await webhooks.createWebhookEndpoint({ url: $<HTMLInputElement>("ep-url").value.trim(), events: evs });
      const s = $("ep-secret");
      s.textContent = `Endpoint ${ep.id} added. Its signing secret (shown once): ${ep.signingSecret ?? ""}`;
      s.hidden = false;
      $<HTMLInputElement>("ep-url").value = "";
      await loadWebhooks();
    });
  });
  $("dl-endpoint").addEventListener("change", () => void act("Deliveries", loadDeliveries));
  $("dl-refresh").addEventListener("click", () => void act("Deliveries", loadDeliveries));
  $("detail-title").setAttribute("tabindex", "-1");

  // One clock for the countdown and the banner (the banner's state changes only with the channel's status).
  setInterval(() => {
    tickCountdown();
    renderBanner();
  }, 500);
}

async function boot() {
  wire();
  try {
    const r = await fetch("/dashboard/config.json", { cache: "no-store" });
    if (r.ok) {
      settings = (await r.json()) as Settings;
      skewMs = new Date(settings.server_time).getTime() - Date.now();
    }
  } catch {
    // Defaults apply.
  }
  document.body.dataset.bannerSecs = String(settings.reconnecting_banner_secs);
  const key = storedKey();
  if (key) {
    try {
      await signIn(key);
    } catch (e) {
      signOut(`Sign-in failed: ${errText(e)}`);
    }
  }
  document.body.dataset.ready = "true";
}

void boot();
