// SPDX-License-Identifier: Apache-2.0
// Browser test of the dashboard: headless Debian Chromium driven by playwright-core, against a real gateway
// in test mode (started by tests/it/dashboard.rs, which passes the settings below).
//   WHATISUP_URL          the gateway, e.g. http://127.0.0.1:41234
//   WHATISUP_KEY          a zpk_test_ key of a fresh customer
//   WHATISUP_BANNER_SECS  the gateway's (shortened) reconnecting-banner threshold
//   WHATISUP_RECEIVER_URL a webhook receiver on loopback that answers 200
//   SCREENSHOT_DIR        where screenshots go (artifacts)
//   CHROMIUM              the browser (default /usr/bin/chromium)
import { chromium } from "playwright-core";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import assert from "node:assert/strict";

const url = must("WHATISUP_URL");
const key = must("WHATISUP_KEY");
const bannerSecs = Number(must("WHATISUP_BANNER_SECS"));
const receiver = must("WHATISUP_RECEIVER_URL");
const shots = process.env.SCREENSHOT_DIR || "dashboard-screenshots";
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const T = 20_000;

function must(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}
if (!existsSync(executablePath)) {
  console.error(`Chromium not found at ${executablePath}: install Debian's package (apt-get install chromium).`);
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

const step = (s) => console.log(`dashboard test: ${s}`);
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const failures = [];
let page;
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await ctx.newPage();
  const origin = new URL(url).origin;
  const foreign = [];
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(origin + "/") && !u.startsWith("data:")) foreign.push(u);
  });
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") console.log(`browser console: ${m.text()}`);
  });
  page.on("dialog", (d) => d.accept());
  const shot = async (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

  step("sign in");
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]", { timeout: T });
  assert.equal(await page.getAttribute("body", "data-banner-secs"), String(bannerSecs), "banner threshold from config.json");
  await shot("01-sign-in");
  await page.getByLabel("API key").fill("zpk_test_not-a-real-key");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("Sign-in failed").waitFor({ timeout: T });
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: /Channels/ }).waitFor({ timeout: T });
  assert.equal(await page.locator("#mode").textContent(), "test mode");
  assert.ok(!page.url().includes(key) && !page.url().includes("zpk_"), "the key never goes into the URL");

  step("webhook endpoint (so the channel's events get delivered)");
  await page.getByRole("button", { name: "Webhooks" }).click();
  await page.getByLabel("Endpoint URL").fill(receiver);
  await page.getByRole("button", { name: "Add endpoint" }).click();
  await page.locator("#ep-secret").getByText("whsec_").waitFor({ timeout: T });
  await page.locator("#endpoint-list li").filter({ hasText: receiver }).waitFor({ timeout: T });
  await page.getByRole("button", { name: "Channels" }).click();

  // A marker that a reload would wipe: every change below must arrive live.
  await page.evaluate(() => (window.__noReload = 1));

  step("create a channel and see its QR code");
  await page.getByLabel("New channel name").fill("Browser test");
  await page.getByRole("button", { name: "Create channel" }).click();
  const item = page.locator("#channel-list li").filter({ hasText: "Browser test" });
  await item.waitFor({ timeout: T });
  await page.locator("#detail-title").getByText("Browser test").waitFor({ timeout: T });
  const channelId = (await page.locator("#detail-id").textContent()).trim();
  assert.match(channelId, /^ch_/);
  await page.getByRole("button", { name: "Show QR code" }).click();
  const qr = page.getByRole("img", { name: /QR code/ });
  await qr.waitFor({ state: "visible", timeout: T });
  assert.match(await qr.getAttribute("src"), /^data:image\/png;base64,/);
  const firstQr = await qr.getAttribute("src");
  await page.locator("#qr-countdown").getByText(/Expires in \d+ s/).waitFor({ timeout: T });
  await item.locator(".badge").getByText("qr").waitFor({ timeout: T });
  await shot("02-qr");

  step("the QR code is refreshed on qr.updated");
  await page.waitForFunction(
    (first) => {
      const img = document.getElementById("qr-img");
      return img && img.getAttribute("src") !== first;
    },
    firstQr,
    { timeout: T },
  );

  step("scan with the simulated phone: connected appears without a reload");
  await page.getByRole("button", { name: "Scan QR" }).click();
  await item.locator(".badge").getByText("connected", { exact: true }).waitFor({ timeout: T });
  await page.locator("#pair-connected").getByText(/Connected as \+\d+/).waitFor({ timeout: T });
  assert.equal(await page.evaluate(() => window.__noReload), 1, "no reload happened");
  await shot("03-connected");

  step(`drop the connection for longer than the banner threshold (${bannerSecs} s)`);
  const banner = page.locator("#reconnecting-banner");
  assert.equal(await banner.isVisible(), false, "no banner while connected");
  await page.getByLabel("Drop for (ms)").fill(String(bannerSecs * 1000 + 5000));
  await page.getByRole("button", { name: "Drop connection" }).click();
  await item.locator(".badge").getByText("reconnecting").waitFor({ timeout: T });
  const sawReconnecting = Date.now();
  const early = await banner.isVisible();
  if (Date.now() - sawReconnecting < (bannerSecs * 1000) / 2) {
    assert.equal(early, false, "the banner waits for the threshold");
  }
  // From now on the page records every change of the banner's visibility: it must show once and never flicker.
  await page.evaluate(() => {
    const el = document.getElementById("reconnecting-banner");
    window.__bannerLog = [el.hidden ? "hidden" : "shown"];
    new MutationObserver(() => {
      const s = el.hidden ? "hidden" : "shown";
      if (window.__bannerLog[window.__bannerLog.length - 1] !== s) window.__bannerLog.push(s);
    }).observe(el, { attributes: true, attributeFilter: ["hidden"] });
  });
  await banner.waitFor({ state: "visible", timeout: bannerSecs * 1000 + T });
  const text = await banner.textContent();
  assert.ok(text.includes("Browser test") && text.includes(channelId), `the banner names the channel: ${text}`);
  assert.equal(await page.getByRole("alert").filter({ hasText: "reconnecting" }).count(), 1, "the banner is an alert");
  await shot("04-reconnecting-banner");

  step("resume: the banner clears when the channel reconnects");
  await item.locator(".badge").getByText("connected", { exact: true }).waitFor({ timeout: T });
  await banner.waitFor({ state: "hidden", timeout: 5_000 });
  const log = await page.evaluate(() => window.__bannerLog);
  assert.deepEqual(log, ["hidden", "shown", "hidden"], "the banner showed once and cleared once (no flicker)");
  assert.equal(await page.evaluate(() => window.__noReload), 1, "no reload happened");
  await shot("05-resumed");

  step("event tail, filtered");
  await page.getByRole("button", { name: "Send inbound message" }).click();
  await page.locator("#tail-list li[data-event='message.received']").first().waitFor({ timeout: T });
  await page.getByLabel("Filter events").fill("status_changed");
  await page.waitForFunction(() => {
    const items = [...document.querySelectorAll("#tail-list li")];
    return items.length >= 4 && items.every((li) => li.dataset.event === "channel.status_changed");
  }, null, { timeout: T });
  const tailText = await page.locator("#tail-list").textContent();
  assert.ok(tailText.includes('"to":"reconnecting"') && tailText.includes('"to":"connected"'), tailText);
  await page.getByLabel("Filter events").fill("");
  await shot("06-event-tail");

  step("deliveries page shows an attempt; redeliver adds one");
  await page.getByRole("button", { name: "Webhooks" }).click();
  const row = page.locator("#deliveries tbody tr").filter({ hasText: "channel.connected" }).first();
  const deadline = Date.now() + T;
  for (;;) {
    await page.getByRole("button", { name: "Refresh" }).click();
    await page.waitForTimeout(300);
    if ((await row.count()) > 0 && (await row.getByText("success").count()) > 0) break;
    assert.ok(Date.now() < deadline, "a delivered channel.connected shows up");
  }
  await row.getByRole("button", { name: /^Attempts/ }).click();
  await page.locator("#attempts tbody tr").filter({ hasText: "200" }).first().waitFor({ timeout: T });
  const attempts1 = await page.locator("#attempts tbody tr").count();
  assert.ok(attempts1 >= 1);
  await shot("07-deliveries");
  await row.getByRole("button", { name: /^Redeliver/ }).click();
  const deadline2 = Date.now() + T;
  for (;;) {
    await row.getByRole("button", { name: /^Attempts/ }).click();
    await page.waitForTimeout(300);
    const n = await page.locator("#attempts tbody tr").filter({ hasText: "manual" }).count();
    if (n >= 1) break;
    assert.ok(Date.now() < deadline2, "the redelivery's attempt shows up");
  }
  await shot("08-redelivered");

  step("pair-code form on a second channel");
  await page.getByRole("button", { name: "Channels" }).click();
  await page.getByLabel("New channel name").fill("Pair by code");
  await page.getByRole("button", { name: "Create channel" }).click();
  await page.locator("#detail-title").getByText("Pair by code").waitFor({ timeout: T });
  await page.getByLabel("Or pair by phone number").fill("+15557654321");
  await page.getByRole("button", { name: "Get pair code" }).click();
  await page.locator("#pair-code").getByText(/Pair code: [A-Z0-9]{4}-[A-Z0-9]{4}/).waitFor({ timeout: T });

  step("phone-sized screen");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.locator("#channel-list li").filter({ hasText: "Browser test" }).getByRole("button").click();
  await page.locator("#detail-title").getByText("Browser test").waitFor({ timeout: T });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no horizontal scrolling on a phone (overflow ${overflow}px)`);
  await page.screenshot({ path: join(shots, "09-phone-390x844.png") });
  await page.setViewportSize({ width: 1280, height: 900 });

  step("log out, then delete");
  await page.getByRole("button", { name: "Log out" }).click();
  await item.locator(".badge").getByText("disconnected").waitFor({ timeout: T });
  await page.getByRole("button", { name: "Delete" }).click();
  await item.waitFor({ state: "detached", timeout: T });
  await shot("10-deleted");

  assert.deepEqual(foreign, [], "no request leaves the gateway's origin");
  assert.equal(await page.evaluate(() => window.__noReload), 1, "no reload happened");
} catch (e) {
  failures.push(e?.stack || String(e));
  await page?.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(`dashboard test FAILED:\n${failures.join("\n")}`);
  process.exit(1);
}
console.log("dashboard test: all steps passed");
