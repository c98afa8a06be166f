// Builds the dashboard into dist/: the page, one JavaScript bundle (the
// app and uPlot) and one stylesheet. The output is deterministic, so a
// test can rebuild it and compare with the committed dist/.
// Usage: node build.mjs [OUTDIR]   (default dist)
import * as esbuild from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const out = process.argv[2] || "dist";
mkdirSync(out, { recursive: true });
await esbuild.build({
  entryPoints: ["src/main.js"],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  legalComments: "eof",
  outfile: join(out, "app.js"),
  logLevel: "warning",
});
const css = readFileSync("node_modules/uplot/dist/uPlot.min.css", "utf8") + "\n" + readFileSync("src/style.css", "utf8");
writeFileSync(join(out, "app.css"), css);
copyFileSync("src/index.html", join(out, "index.html"));
