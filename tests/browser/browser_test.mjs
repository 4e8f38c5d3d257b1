// Headless Chromium against a running `vnca serve` (started by run.sh, URL in VNCA_URL),
// as a person sees the page at 1280x800 and on a 390x844 phone:
// - the default model grows its samples and then holds them: the view must not have
//   decayed 10 s after growth (doubling models were never trained to persist);
// - frames/s is not 0 in the first second; the actual steps/s is shown;
// - an erase is drawn at once, before the server's frame;
// - the A-B slider morphs finished samples (no seed dots) and is explained;
// - a scripted stroke on the drawing pad is encoded and grown: the grown digit overlaps
//   the drawn one (intersection over union of ink pixels), and, with a model trained to
//   heal, an erased part of it grows back;
// - the phone layout: no horizontal overflow, 44 px touch targets, canvas resized on
//   rotation; the colour model shows colour; a second tab is its own session.
// Saves screenshot*.png beside this file (look at them).
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const url = process.env.VNCA_URL;
if (!url) throw new Error("VNCA_URL is not set (run this through run.sh)");

let passed = 0, failed = 0;
function check(cond, what, detail = "") {
  if (cond) { passed++; console.log(`ok   ${what}${detail ? ` (${detail})` : ""}`); }
  else { failed++; console.log(`FAIL ${what}${detail ? ` (${detail})` : ""}`); }
  return cond;
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "vnca-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1280, height: 800 },
});
const t0 = Date.now();

// Pixels (first channel) of sample k as shown on the canvas, one value per image pixel.
const samplePixels = (page, k) => page.evaluate((k) => {
  const L = window.vnca.layout, c = document.getElementById("view");
  const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const col = k % L.cols, row = Math.floor(k / L.cols), cell = L.size + L.gap;
  const out = [];
  for (let y = 0; y < L.size; y++) {
    for (let x = 0; x < L.size; x++) {
      const px = Math.floor((col * cell + x + 0.5) * L.scale), py = Math.floor((row * cell + y + 0.5) * L.scale);
      out.push(data[(py * c.width + px) * 4]);
    }
  }
  return out;
}, k);
const meanAbs = (a, b, keep = () => true) => {
  let s = 0, n = 0;
  for (let i = 0; i < a.length; i++) if (keep(i)) { s += Math.abs(a[i] - b[i]); n++; }
  return s / Math.max(1, n);
};
const grown = (page) => page.waitForFunction(() => window.vnca.header && (window.vnca.header.flags & 1) === 0
  && window.vnca.status && window.vnca.status.generation === window.vnca.header.generation, null, { timeout: 60000 });

// Screen position of image pixel (ix, iy) of sample k.
async function at(page, k, ix, iy) {
  const L = await page.evaluate(() => window.vnca.layout);
  const box = await page.locator("#view").boundingBox();
  const css = box.width / (L.width * L.scale);
  const cell = L.size + L.gap;
  return [box.x + ((k % L.cols) * cell + ix) * L.scale * css, box.y + (Math.floor(k / L.cols) * cell + iy) * L.scale * css];
}

try {
  const page = context.pages()[0] ?? (await context.newPage());
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push(m.text()); });
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(url.replace(/\/$/, ""))) foreign.push(r.url()); });

  // ---- the default view -------------------------------------------------------------
  const opened = Date.now();
  await page.goto(`${url}?seed=${process.env.VNCA_SEED ?? "1"}`);
  await page.waitForFunction(() => window.vnca && window.vnca.frames >= 3, null, { timeout: 30000 });
  const fpsEarly = (await page.textContent("#fps")).trim();
  check(fpsEarly !== "0", "frames/s is not 0 while the first frames come", `"${fpsEarly}" after ${((Date.now() - opened) / 1000).toFixed(1)} s`);
  await page.waitForFunction(() => window.vnca.header.step >= 8, null, { timeout: 30000 });
  const rate = await page.evaluate(() => [window.vnca.rate, window.vnca.status.steps_per_second, document.getElementById("rate").textContent]);
  check(rate[0] > 0 && Number(rate[2]) > 0, "the steps/s actually run are shown", `${rate[2]} steps/s shown, aiming at ${rate[1]}`);

  await grown(page);
  const first = await page.evaluate(() => window.vnca.models[window.vnca.status.model]);
  await page.waitForTimeout(300);
  const atGrowth = await samplePixels(page, 0);
  const phase = (await page.textContent("#phase")).trim();
  check(!/^healing/.test(phase) || first.heals, "the phase says healing only for a model trained to heal", `"${phase}" (${first.name}, heals: ${first.heals})`);
  await page.waitForTimeout(10000);
  const later = await samplePixels(page, 0);
  const decay = meanAbs(atGrowth, later);
  check(decay < 3, "the default view has not decayed 10 s after growth", `mean |diff| ${decay.toFixed(2)} grey levels`);
  check(Math.max(...later) - Math.min(...later) > 100, "and still shows a picture", `range ${Math.min(...later)}..${Math.max(...later)}`);
  await page.screenshot({ path: path.join(here, "screenshot-desktop.png") });

  // ---- an erase is drawn at once ----------------------------------------------------
  await page.locator("#brush").fill("4");
  const c0 = (await page.evaluate(() => window.vnca.layout)).size / 2;
  const [ex, ey] = await at(page, 0, c0, c0);
  const instant = await page.evaluate(([x, y, c]) => {
    const v = document.getElementById("view"), L = window.vnca.layout;
    const frames = window.vnca.frames;
    const ev = (type) => new PointerEvent(type, { clientX: x, clientY: y, pointerId: 1, bubbles: true, pointerType: "mouse" });
    v.dispatchEvent(ev("pointerdown")); v.dispatchEvent(ev("pointerup"));
    const d = v.getContext("2d").getImageData(Math.floor((c + 0.5) * L.scale), Math.floor((c + 0.5) * L.scale), 1, 1).data;
    return { framesBefore: frames, framesAfter: window.vnca.frames, rgb: [d[0], d[1], d[2]], want: window.vnca.models[window.vnca.status.model].erased_rgb };
  }, [ex, ey, c0]);
  check(instant.framesAfter === instant.framesBefore && instant.rgb.join() === instant.want.join(),
    "an erase shows at once, before the server's frame", `pixel ${instant.rgb} = erased colour ${instant.want}`);

  // ---- the A-B slider morphs --------------------------------------------------------
  // Wait for the regrowth's own frames: until the server has the click, the last frame
  // of the previous growth looks grown, and moving the slider would then restart a
  // growth under way (from the seed) instead of morphing a finished one.
  const before = await page.evaluate(() => window.vnca.header.generation);
  await page.click("#restart");
  await page.waitForFunction((g) => window.vnca.header.generation > g, before, { timeout: 10000 });
  await grown(page);
  const t0pic = await samplePixels(page, 0);
  const gen = await page.evaluate(() => window.vnca.header.generation);
  await page.locator("#interp").fill("500");
  await page.waitForFunction((g) => window.vnca.header.generation > g && Math.abs(window.vnca.status.t - 0.5) < 1e-9, gen, { timeout: 10000 });
  const hm = await page.evaluate(() => window.vnca.header);
  const mid = await samplePixels(page, 0);
  check((hm.flags & 1) === 0 && hm.grid === hm.size, "the slider shows the finished growth of the new z (no seed dots)", `step ${hm.step}, grid ${hm.grid}`);
  check(meanAbs(t0pic, mid) > 2, "and the picture morphs", `mean |diff| ${meanAbs(t0pic, mid).toFixed(1)} between t = 0 and 0.5`);
  const note = await page.textContent("#interpnote");
  check(/A/.test(note) && /B/.test(note) && /prior/.test(note), "the slider's A and B are explained", note.slice(0, 80));
  await page.locator("#interp").fill("0");

  // ---- draw a digit -----------------------------------------------------------------
  // A "7": a bar across the top, a stroke down to the lower left.
  async function drawSeven() {
    await page.click("#drawclear");
    const b = await page.locator("#pad").boundingBox();
    const p = (u, v) => [b.x + u * b.width, b.y + v * b.height];
    await page.mouse.move(...p(0.28, 0.22)); await page.mouse.down();
    for (let i = 1; i <= 10; i++) await page.mouse.move(...p(0.28 + 0.44 * i / 10, 0.22));
    for (let i = 1; i <= 12; i++) await page.mouse.move(...p(0.72 - 0.27 * i / 12, 0.22 + 0.58 * i / 12));
    await page.mouse.up();
  }
  // Intersection over union of the ink of the drawing sent (28x28, > 127) and of the
  // grown sample 0 (centred in the model's image, > 127).
  const overlap = async () => {
    const [drawn, L] = await page.evaluate(() => [window.vnca.drawing, window.vnca.layout]);
    const shown = await samplePixels(page, 0);
    const off = (L.size - 28) / 2;
    let inter = 0, union = 0;
    for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) {
      const a = drawn[y * 28 + x] > 127, b = shown[(y + off) * L.size + x + off] > 127;
      inter += a && b; union += a || b;
    }
    return inter / Math.max(1, union);
  };
  const models = await page.evaluate(() => window.vnca.models);
  const results = {};
  for (const [i, m] of models.entries()) {
    if (m.draw_size === null) continue;
    await page.locator("#model").selectOption(String(i));
    await page.waitForFunction((i) => window.vnca.status.model === i, i, { timeout: 30000 });
    await drawSeven();
    const g = await page.evaluate(() => window.vnca.header.generation);
    await page.click("#drawgo");
    await page.waitForFunction((g) => window.vnca.status.source === "drawing" && window.vnca.header.generation > g && window.vnca.header.n === 1, g, { timeout: 30000 });
    if (!(await page.evaluate(() => window.vnca.status.playing))) await page.click("#play");
    await grown(page);
    await page.waitForTimeout(200);
    results[m.name] = await overlap();
    // Every model that takes drawings must reproduce the stroke: IoU 0.86 for the default
    // and 0.74-0.75 for the shipped non-doubling model (hidden 256, 2 runs; 0.74-0.78 over 2
    // for the h128 model it started from, at 20,800 updates; 0.77 over 2 for that run at
    // 19,000, 0.74-0.76 over 2 at 15,400, 0.77 over 2 at 10,600, 0.77-0.78 over 2 at 8,800,
    // 0.72-0.75 over 2 at 6,000, all shipped before it; the narrow model
    // shipped before them 0.71-0.78 over 3, 0.69-0.73 over 3 at 33,000 updates, 0.70-0.78
    // over 5 at 20,500; the blob-drawing one before them needed a bound of 0.2).
    const min = 0.5;
    check(results[m.name] > min, `${m.name}: the grown digit resembles the drawing`, `IoU of ink ${results[m.name].toFixed(2)} (> ${min})`);
    await page.screenshot({ path: path.join(here, `screenshot-draw-${m.name}.png`) });

    if (!m.heals) continue;
    // Erase-and-heal on the drawn digit: pause, erase a disc over the ink, step 32 times;
    // three times, at three places on the digit. Cells update at random (p_update 0.5), so
    // one erasure is a noisy measurement: with the blob model shipped before 2026-12-05 the
    // fraction of the hole left after 32 steps ranged 0.29-0.74 over 14 single erasures
    // (mean 0.45); with the shipped model (hidden 256) 0.10-0.20 over 6 (2 runs of this
    // test, 0.15 and 0.15 summed over each run's three); with the h128 model it started from
    // (20,800 updates) 0.08-0.19 over 6, 0.11 and 0.14; with that run at 19,000 updates
    // 0.07-0.20, 0.15 and 0.16; at 15,400 0.06-0.20, 0.13 and 0.12; at 10,600 0.07-0.15,
    // 0.13 and 0.11; at 8,800 0.08-0.23, 0.12 and 0.13; at 6,000 0.11-0.19, 0.14 and 0.15);
    // with the narrow model shipped before them 0.10-0.27 over 9 (0.13-0.19 summed; at
    // 33,000 updates 0.09-0.27 over 9, at 20,500 0.11-0.31 over 15). Summed over three
    // erasures it has to stay under 0.4; a model that does not heal leaves 1.0.
    await page.waitForTimeout(500);
    if (await page.evaluate(() => window.vnca.status.playing)) await page.click("#play");
    await page.waitForFunction(() => !window.vnca.status.playing, null, { timeout: 10000 });
    const L = await page.evaluate(() => window.vnca.layout);
    const r = 5;
    await page.locator("#brush").fill(String(r));
    let damaged = 0, healed = 0;
    const fractions = [];
    for (const [fx, fy] of [[0.55, 0.32], [0.45, 0.5], [0.4, 0.7]]) {
      const cx = L.size * fx, cy = L.size * fy;
      await page.mouse.move(0, 0);
      const pre = await samplePixels(page, 0);
      const f = await page.evaluate(() => window.vnca.frames);
      await page.mouse.move(...(await at(page, 0, cx, cy))); await page.mouse.down(); await page.mouse.up();
      await page.mouse.move(0, 0);
      await page.waitForFunction((f) => window.vnca.frames > f, f, { timeout: 10000 });
      await page.waitForTimeout(200);
      const inDisc = (i) => ((i % L.size) + 0.5 - cx) ** 2 + (Math.floor(i / L.size) + 0.5 - cy) ** 2 <= (r - 1) ** 2;
      const d = meanAbs(await samplePixels(page, 0), pre, inDisc);
      const s0 = await page.evaluate(() => window.vnca.header.step);
      await page.locator("body").focus();
      for (let k = 0; k < 32; k++) await page.keyboard.press("s");
      await page.waitForFunction((s) => window.vnca.header.step >= s + 32, s0, { timeout: 30000 });
      await page.waitForTimeout(200);
      const h = meanAbs(await samplePixels(page, 0), pre, inDisc);
      damaged += d; healed += h;
      fractions.push((h / Math.max(d, 1e-9)).toFixed(2));
    }
    check(damaged > 3 * 20 && healed < 0.4 * damaged, `${m.name}: erased parts of the drawn digit heal in 32 steps`,
      `mean |diff| to before the damage, in the erased discs, summed over 3 erasures: ${damaged.toFixed(1)} -> ${healed.toFixed(1)} (fraction left each: ${fractions.join(", ")})`);
    await page.screenshot({ path: path.join(here, `screenshot-healed-${m.name}.png`) });
  }
  check(Object.keys(results).length > 0, "at least one model takes drawings", JSON.stringify(results));

  // Bad input from the page: an empty drawing is an error line, and the session goes on.
  await page.click("#drawclear");
  await page.evaluate(() => { window.vnca.drawing = null; });
  const nerr = await page.evaluate(() => window.vnca.errors.length);
  await page.click("#drawgo");
  const bannerText = await page.textContent("#banner");
  check(/empty/.test(bannerText), "an empty pad says so", bannerText);
  check((await page.evaluate(() => window.vnca.errors.length)) === nerr, "and sends nothing");

  // ---- the colour model -------------------------------------------------------------
  const colour = models.findIndex((m) => m.channels === 3);
  if (colour >= 0) {
    await page.locator("#model").selectOption(String(colour));
    await page.waitForFunction((i) => window.vnca.status && window.vnca.status.model === i && window.vnca.header.channels === 3, colour, { timeout: 30000 });
    if (!(await page.evaluate(() => window.vnca.status.playing))) await page.click("#play");
    await grown(page);
    const chroma = await page.evaluate(() => {
      const c = document.getElementById("view");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let sum = 0;
      for (let i = 0; i < d.length; i += 4) sum += Math.abs(d[i] - d[i + 1]) + Math.abs(d[i + 1] - d[i + 2]);
      return sum / (d.length / 4);
    });
    check(chroma > 2, "the colour model shows colour", `mean |R-G|+|G-B| ${chroma.toFixed(1)}`);
    check(!(await page.locator("#drawgo").isEnabled()), "the drawing pad is off for a model not trained on digits");
  }

  // ---- a second tab, on a phone -----------------------------------------------------
  const phone = await context.newPage();
  await phone.setViewportSize({ width: 390, height: 844 });
  phone.on("pageerror", (e) => pageErrors.push(String(e)));
  await phone.goto(url);
  await phone.waitForFunction(() => window.vnca && window.vnca.frames > 3, null, { timeout: 30000 });
  check((await phone.evaluate(() => window.vnca.status.model)) === 0, "a second tab runs its own session");
  const layoutCheck = () => phone.evaluate(() => {
    const doc = document.documentElement, wrap = document.getElementById("stagewrap").getBoundingClientRect();
    const view = document.getElementById("view").getBoundingClientRect();
    const small = [...document.querySelectorAll("button, select")]
      .filter((e) => e.offsetParent !== null)
      .map((e) => [e.id, e.getBoundingClientRect()])
      .filter(([, r]) => r.height < 44 || r.width < 44)
      .map(([id, r]) => `${id} ${r.width.toFixed(0)}x${r.height.toFixed(0)}`);
    return {
      inner: window.innerWidth, scroll: doc.scrollWidth, view: view.width, wrap: wrap.width,
      model: document.getElementById("model").getBoundingClientRect().width, small,
    };
  });
  const p1 = await layoutCheck();
  check(p1.scroll <= p1.inner, "390x844: no horizontal overflow", `page ${p1.scroll} px wide in ${p1.inner}`);
  check(p1.view <= p1.wrap + 0.5, "390x844: the canvas fits its container", `${p1.view.toFixed(0)} in ${p1.wrap.toFixed(0)} px`);
  check(p1.model <= 200, "390x844: the model menu is short", `${p1.model.toFixed(0)} px`);
  check(p1.small.length === 0, "390x844: every button and menu is at least 44x44 px", p1.small.join(", "));
  await phone.screenshot({ path: path.join(here, "screenshot-phone.png"), fullPage: true });
  await phone.setViewportSize({ width: 844, height: 390 });
  await phone.waitForTimeout(400);
  const p2 = await layoutCheck();
  check(p2.scroll <= p2.inner && p2.view > p1.view, "rotated to 844x390: the canvas is sized again, no overflow",
    `canvas ${p1.view.toFixed(0)} -> ${p2.view.toFixed(0)} px, page ${p2.scroll} in ${p2.inner}`);
  await phone.screenshot({ path: path.join(here, "screenshot-phone-rotated.png") });
  await phone.close();

  check(pageErrors.length === 0, "no errors in the page", pageErrors.join("; "));
  check(foreign.length === 0, "the page loads nothing from elsewhere", foreign.join(", "));
} catch (e) {
  failed++;
  console.log(`FAIL ${e.stack || e}`);
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log(`browser test: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
