// Screenshot of a review dataset in Argilla's web UI (docs/argilla-review.png), with headless Chromium.
// Not part of `make test`. Needs: a running server (make argilla), the dataset sent (axbench curate send),
// `npm install playwright-core` (in any folder on NODE_PATH) and Debian's chromium.
// Usage: ARGILLA_URL=http://127.0.0.1:6900 ARGILLA_USER=owner ARGILLA_PASSWORD=... \
//        DATASET_URL=<the URL axbench curate send prints> node docs/tools/argilla_screenshot.mjs docs/argilla-review.png
import { chromium } from "playwright-core";

const base = process.env.ARGILLA_URL ?? "http://127.0.0.1:6900";
const out = process.argv[2] ?? "docs/argilla-review.png";
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
await page.goto(`${base}/sign-in`);
await page.fill("input[name=username], input#username, input[type=text]", process.env.ARGILLA_USER ?? "owner");
await page.fill("input[type=password]", process.env.ARGILLA_PASSWORD);
await page.keyboard.press("Enter");
await page.waitForURL((url) => !url.pathname.includes("sign-in"), { timeout: 30000 });
await page.goto(process.env.DATASET_URL);
await page.waitForLoadState("networkidle");
await page.waitForTimeout(3000);
await page.screenshot({ path: out });
await browser.close();
console.log(`wrote ${out}`);
