// How docs/serve-demo.png was taken: a real request to `ppcr serve` in headless Chromium.
//
//   ppcr serve --port 7931 &                      # the embedded default model
//   apt-get install -y chromium                   # Debian's browser
//   npm install playwright-core                   # in a scratch folder (not committed)
//   NODE_PATH=<scratch>/node_modules node docs/serve-demo-screenshot.mjs http://127.0.0.1:7931/ docs/serve-demo.png
//
// It opens the page, picks the first Shapes-Ref example (image + four expressions), presses
// Segment, waits for the four overlays and the table, and screenshots the whole page.
import { createRequire } from "node:module";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const [url = "http://127.0.0.1:7860/", out = "docs/serve-demo.png"] = process.argv.slice(2);

// A fresh, empty profile folder (Playwright passes it as --user-data-dir).
const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "ppcr-shot-")), {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1280, height: 900 },
  deviceScaleFactor: 1,
});
try {
  const page = await browser.newPage();
  await page.goto(url, { waitUntil: "networkidle" });
  await page.getByText("the leftmost angular orange shape", { exact: false }).first().click();
  await page.getByRole("button", { name: "Segment" }).click();
  await page.getByText("expressions on a", { exact: false }).waitFor({ timeout: 60000 });
  await page.getByText("the orange ellipse in the middle", { exact: true }).last().waitFor(); // its table row
  await page.waitForTimeout(1000); // let the gallery images finish loading
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
}
