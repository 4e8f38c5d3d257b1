// Headless Chromium against a running `vnca serve` (started by run.sh, URL in VNCA_URL):
// frames arrive and the step counter advances, a mouse drag erases cells (the canvas
// changes there), frames keep coming afterwards (and, with --expect-recovery, the erased
// area grows back towards the pre-damage picture), the controls work, a second tab runs
// its own session. Saves screenshot.png beside this file.
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const url = process.env.VNCA_URL;
const expectRecovery = process.argv.includes("--expect-recovery");
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
  viewport: { width: 1000, height: 900 },
});
const t0 = Date.now();
try {
  const page = context.pages()[0] ?? (await context.newPage());
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push(m.text()); });
  // Nothing may be fetched from anywhere but the server itself.
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(url.replace(/\/$/, ""))) foreign.push(r.url()); });

  await page.goto(`${url}?seed=${process.env.VNCA_SEED ?? "1"}`);
  await page.waitForFunction(() => window.vnca && window.vnca.frames > 3, null, { timeout: 30000 });
  const step1 = Number(await page.textContent("#step"));
  await page.waitForFunction((s) => Number(document.getElementById("step").textContent) > s + 2, step1, { timeout: 30000 });
  const step2 = Number(await page.textContent("#step"));
  check(step2 > step1, "the step counter advances", `${step1} -> ${step2}`);

  // Pixels of one sample as shown on the canvas (one value per image pixel).
  const samplePixels = (k) => page.evaluate((k) => {
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
  const spread = (a) => Math.max(...a) - Math.min(...a);

  // Wait for the end of growth, then pause.
  await page.waitForFunction(() => window.vnca.header && (window.vnca.header.flags & 1) === 0, null, { timeout: 60000 });
  const grown = await samplePixels(0);
  check(spread(grown) > 0, "the canvas shows a picture, not a blank", `pixel range ${Math.min(...grown)}..${Math.max(...grown)}`);
  await page.click("#play");
  await page.waitForFunction(() => window.vnca.status && window.vnca.status.playing === false, null, { timeout: 10000 });
  check((await page.textContent("#play")).trim() === "Play", "pause: the button turns into Play");
  // Reproducibly: regrow, then step by hand (the Step button, then the `s` key) to one
  // step past the growth.
  const gen0 = await page.evaluate(() => window.vnca.header.generation);
  await page.click("#restart");
  await page.waitForFunction((g) => window.vnca.header.generation > g && window.vnca.header.step === 0
    && window.vnca.status.generation === window.vnca.header.generation, gen0, { timeout: 10000 });
  const target = (await page.evaluate(() => window.vnca.status.growth_steps)) + 1;
  await page.click("#stepbtn");
  await page.waitForFunction(() => window.vnca.header.step === 1, null, { timeout: 10000 });
  await page.locator("body").focus();
  for (let i = 1; i < target; i++) await page.keyboard.press("s");
  await page.waitForFunction((t) => window.vnca.header.step === t, target, { timeout: 20000 });
  let frames;
  const pausedStep = Number(await page.textContent("#step"));
  check(pausedStep === target, "Step and the `s` key advance one update each", `step ${pausedStep}`);
  await page.mouse.move(0, 0);
  await page.waitForTimeout(100);
  const pre = await samplePixels(0);

  // Drag across the centre of sample 0 with a brush of radius 5.
  await page.locator("#brush").fill("5");
  const L = await page.evaluate(() => window.vnca.layout);
  const box = await page.locator("#view").boundingBox();
  const css = box.width / (L.width * L.scale); // CSS pixels per canvas pixel
  const at = (ix, iy) => [box.x + ix * L.scale * css, box.y + iy * L.scale * css];
  const c = L.size / 2;
  frames = await page.evaluate(() => window.vnca.frames);
  await page.mouse.move(...at(c - 3, c));
  await page.mouse.down();
  for (let i = 1; i <= 6; i++) await page.mouse.move(...at(c - 3 + i, c));
  await page.mouse.up();
  await page.waitForFunction((f) => window.vnca.frames > f, frames, { timeout: 10000 });
  await page.mouse.move(0, 0); // no brush outline over the picture
  await page.waitForTimeout(300);
  const damaged = await samplePixels(0);

  // Mean |difference| to the pre-damage picture inside a disc surely erased, and outside.
  const region = (a, b, inside) => {
    let s = 0, n = 0;
    for (let y = 0; y < L.size; y++) for (let x = 0; x < L.size; x++) {
      const d2 = (x + 0.5 - c) ** 2 + (y + 0.5 - c) ** 2;
      if ((d2 <= 16) === inside) { s += Math.abs(a[y * L.size + x] - b[y * L.size + x]); n++; }
    }
    return s / n;
  };
  const dmg = region(damaged, pre, true);
  check(dmg > 5, "erasing changes the canvas where the mouse went", `mean |diff| ${dmg.toFixed(1)} grey levels inside, ${region(damaged, pre, false).toFixed(2)} outside the brush`);
  check(Number(await page.textContent("#step")) === pausedStep, "an erase while paused shows at once, same step");

  // Recovery, measured against the same sample grown again without damage (the model
  // keeps changing after its growth schedule, damaged or not): step by hand, record the
  // erased area every 8 steps, then regrow, step to the same steps and compare.
  const K = 40, every = 8;
  const stepTo = async (s) => {
    const now = await page.evaluate(() => window.vnca.header.step);
    for (let i = now; i < s; i++) await page.keyboard.press("s");
    await page.waitForFunction((t) => window.vnca.header.step === t, s, { timeout: 20000 });
  };
  const healed = [];
  for (let k = every; k <= K; k += every) { await stepTo(pausedStep + k); healed.push(await samplePixels(0)); }
  const gen1 = await page.evaluate(() => window.vnca.header.generation);
  await page.click("#restart");
  await page.waitForFunction((g) => window.vnca.header.generation > g, gen1, { timeout: 10000 });
  const control = [];
  for (let k = every; k <= K; k += every) { await stepTo(pausedStep + k); control.push(await samplePixels(0)); }
  const series = [dmg, ...healed.map((h, i) => region(h, control[i], true))];
  console.log(`     erased area, mean |diff| to the undamaged run, every ${every} steps: ${series.map((v) => v.toFixed(1)).join(" ")}`);
  if (expectRecovery) {
    const end = series[series.length - 1];
    check(end < 0.5 * dmg, `the erased area recovers (difference to the undamaged run falls by half in ${K} steps)`, `${dmg.toFixed(1)} -> ${end.toFixed(1)}`);
  }

  // Play on: frames keep coming.
  await page.click("#play");
  await page.waitForFunction((s) => Number(document.getElementById("step").textContent) >= s + 30, pausedStep + K, { timeout: 30000 });
  const last = Number(await page.textContent("#step"));
  check(last >= pausedStep + K + 30, "frames keep coming after the damage, playing", `step ${pausedStep + K} -> ${last}`);

  // The other controls.
  const gen = await page.evaluate(() => window.vnca.header.generation);
  await page.click("#new");
  await page.waitForFunction((g) => window.vnca.header.generation > g, gen, { timeout: 10000 });
  check(true, "New latents starts a new growth");
  await page.locator("#interp").fill("500");
  await page.waitForFunction(() => window.vnca.status && Math.abs(window.vnca.status.t - 0.5) < 1e-9, null, { timeout: 10000 });
  check(true, "the interpolation slider regrows from the interpolated z");
  await page.locator("#batch").selectOption("9");
  await page.waitForFunction(() => window.vnca.header.n === 9 && window.vnca.layout.n === 9, null, { timeout: 10000 });
  check(true, "the batch selector shows 9 samples");
  await page.locator("#speed").fill("100");
  await page.waitForFunction(() => window.vnca.status.steps_per_second === window.vnca.limits.max_speed, null, { timeout: 10000 });
  check(true, "the speed slider reaches the maximum speed");

  // A second tab: its own session, unaffected by the first one's pause.
  const page2 = await context.newPage();
  await page2.goto(url);
  await page2.waitForFunction(() => window.vnca && window.vnca.frames > 5, null, { timeout: 30000 });
  await page.click("#play");
  await page.waitForFunction(() => window.vnca.status.playing === false, null, { timeout: 10000 });
  const s2 = Number(await page2.textContent("#step"));
  await page2.waitForFunction((s) => Number(document.getElementById("step").textContent) > s + 3, s2, { timeout: 30000 });
  check((await page2.evaluate(() => window.vnca.header.n)) === 4, "a second tab runs its own session (default batch, still playing)");
  await page2.close();

  // The picture: fresh samples just grown, paused, one of them with an erased stroke and
  // the brush over it (the doubling model drifts if left running long after growth).
  await page.locator("#interp").fill("0");
  await page.click("#new");
  await page.click("#play");
  await page.waitForFunction(() => window.vnca.status.playing && window.vnca.header.step < 5, null, { timeout: 10000 });
  await page.waitForFunction(() => (window.vnca.header.flags & 1) === 0, null, { timeout: 30000 });
  await page.click("#play");
  await page.waitForFunction(() => window.vnca.status.playing === false, null, { timeout: 10000 });
  const L9 = await page.evaluate(() => window.vnca.layout);
  const at9 = (k, ix, iy) => [
    box.x + ((k % L9.cols) * (L9.size + L9.gap) + ix) * L9.scale * css,
    box.y + (Math.floor(k / L9.cols) * (L9.size + L9.gap) + iy) * L9.scale * css,
  ];
  await page.locator("#brush").fill("3");
  await page.mouse.move(...at9(4, 6, 10));
  await page.mouse.down();
  for (let i = 1; i <= 10; i++) await page.mouse.move(...at9(4, 6 + 2 * i, 10 + i));
  await page.mouse.up();
  await page.waitForTimeout(300);
  await page.screenshot({ path: path.join(here, "screenshot.png"), fullPage: true });

  // A colour model, when the server has one (run.sh's VNCA_EXTRA_CHECKPOINTS): the model
  // selector switches to it and the canvas shows colour, not grey.
  const colour = await page.evaluate(() => window.vnca.models.findIndex((m) => m.channels === 3));
  if (colour >= 0) {
    await page.locator("#model").selectOption(String(colour));
    await page.waitForFunction((i) => window.vnca.status && window.vnca.status.model === i && window.vnca.header.channels === 3, colour, { timeout: 30000 });
    if (!(await page.evaluate(() => window.vnca.status.playing))) await page.click("#play");
    await page.waitForFunction(() => window.vnca.header.channels === 3 && (window.vnca.header.flags & 1) === 0, null, { timeout: 60000 });
    const chroma = await page.evaluate(() => {
      const c = document.getElementById("view");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let sum = 0;
      for (let i = 0; i < d.length; i += 4) sum += Math.abs(d[i] - d[i + 1]) + Math.abs(d[i + 1] - d[i + 2]);
      return sum / (d.length / 4);
    });
    check(chroma > 2, "the model selector switches to the colour model and the canvas shows colour", `mean |R-G|+|G-B| ${chroma.toFixed(1)}`);
  }
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
