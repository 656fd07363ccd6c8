// Drives the MON page in headless Chromium (Debian's `chromium`, through puppeteer-core) the
// way a person would, and prints what it saw as one JSON line on stdout; the Rust tests judge
// it (host-agent/tests/mon_page.rs, vm-tests/tests/mon_page.rs; the runner is
// appmon_host_agent::testing::browser).
//
//   node drive-page.mjs '{"url": "http://127.0.0.1:PORT/mon/", "user": "mon", "password": "…",
//     "view": "a view name", "counter": {"domain": …, "entity": …, "counter": …},
//     "points": 3, "screenshot": "/path.png"}'
//
// 1. Without credentials, and with wrong ones: the answer (a 401 asking for Basic credentials,
//    which makes a browser show its login prompt) and whether the page's data showed.
// 2. With the right ones: the page loads and lists the VM; a view is made on the page (New view,
//    a name, the VM, entity and counter picked in the editor's lists, Save); its chart is drawn
//    until it holds `points` values of the counter; a screenshot is written.
// 3. The page is loaded again: the saved view is back with its chart.
import puppeteer from "puppeteer-core";

const args = JSON.parse(process.argv[2]);
const timeout = args.timeout_ms ?? 30000;
const browser = await puppeteer.launch({
  executablePath: process.env.APPMON_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"],
});
const report = { console: [] };
try {
  // 1. Credentials.
  report.refused = [];
  for (const credentials of [null, { username: args.user, password: "not-" + args.password }]) {
    const page = await browser.newPage();
    if (credentials) await page.authenticate(credentials);
    let status = null;
    let challenge = null;
    page.on("response", (r) => {
      if (r.url() === args.url && status === null) {
        status = r.status();
        challenge = r.headers()["www-authenticate"] ?? null;
      }
    });
    try {
      await page.goto(args.url, { waitUntil: "load", timeout });
    } catch (e) {
      // Chromium gives up on credentials that keep being refused.
      report.refused_error = String(e.message);
    }
    const text = await page.evaluate(() => document.body ? document.body.innerText : "").catch(() => "");
    report.refused.push({
      credentials: credentials ? "wrong" : "none",
      status,
      challenge,
      shows_domain: text.includes(args.counter.domain),
    });
    await page.close();
  }

  // 2. The page with the right credentials.
  const page = await browser.newPage();
  page.on("console", (m) => report.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => report.console.push(`pageerror: ${e.message}`));
  await page.setViewport({ width: 1200, height: 800 });
  await page.authenticate({ username: args.user, password: args.password });
  const response = await page.goto(args.url, { waitUntil: "load", timeout });
  report.status = response.status();
  const c = args.counter;
  // The VM's row, and its counters known to the page.
  await page.waitForFunction(
    (c) => [...document.querySelectorAll("#vms tbody tr")].some((r) => r.dataset.vm === c.domain),
    { timeout },
    c,
  );
  report.vm_row = await page.evaluate(
    (c) => [...document.querySelectorAll("#vms tbody tr")].find((r) => r.dataset.vm === c.domain).innerText,
    c,
  );
  report.vm_rows = await page.evaluate(() =>
    [...document.querySelectorAll("#vms tbody tr")].map((r) => r.innerText),
  );
  // Make the view.
  await page.click("#new-view");
  await page.type("#view-name", args.view);
  await page.type(".chart-title", "Chart of " + c.counter);
  await page.click(".add-counter");
  const pick = async (selector, value) => {
    await page.waitForFunction(
      (s, v) => [...document.querySelectorAll(s + " option")].some((o) => o.value === v),
      { timeout },
      selector,
      value,
    );
    await page.select(selector, value);
  };
  await pick(".pick-vm", c.domain);
  await pick(".pick-entity", c.entity);
  await pick(".pick-counter", c.counter);
  await page.click("#save-view");
  // Its chart, until it holds enough values.
  const drawn = async () => {
    await page.waitForFunction(
      (n) => window.monCharts.length === 1 && window.monCharts[0].plot.data[1].filter((v) => v !== null).length >= n,
      { timeout, polling: 200 },
      args.points,
    );
    return page.evaluate(() => {
      const { plot, gone } = window.monCharts[0];
      return {
        labels: plot.series.slice(1).map((s) => s.label),
        values: plot.data[1].filter((v) => v !== null),
        times: plot.data[0],
        legend: document.querySelector(".u-legend") ? document.querySelector(".u-legend").innerText : null,
        canvas: !!document.querySelector(".chart canvas"),
        gone: gone.textContent,
        title: document.querySelector(".chart h3").textContent,
        tabs: [...document.querySelectorAll("#tabs button")].map((b) => b.textContent),
        hash: location.hash,
      };
    });
  };
  report.chart = await drawn();
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
  report.pwned = await page.evaluate(() => window.pwned ?? null);
  report.body = await page.evaluate(() => document.body.innerText);

  // 3. Loaded again: the view is stored on the host.
  await page.goto(args.url.split("#")[0] + "#" + encodeURIComponent(args.view), { waitUntil: "load", timeout });
  report.reloaded = await drawn();
  report.alarms_tab = await page.evaluate(async () => {
    document.querySelector('#tabs button[data-tab="alarms"]').click();
    await new Promise((r) => setTimeout(r, 100));
    return document.getElementById("alarms").innerText;
  });
  report.pwned = report.pwned ?? (await page.evaluate(() => window.pwned ?? null));
  await page.close();
} catch (e) {
  report.error = String(e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
