// Builds the front end of `foundry lab web` into src/llm_foundry/lab/web/static/ (committed).
//
//   npm ci && npm run build
//
// vendor.js: Monaco (the core editor and the Python language only) and ECharts (line, radar and
// heatmap charts on the canvas renderer), minified; editor.worker.js: Monaco's one worker (no
// language service workers: completion and lint come from the server, jedi and ruff); app.js: the
// lab's own code, not minified, so the shipped file can be read. Same lockfile, same output.
import * as esbuild from "esbuild";
import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "..", "src", "llm_foundry", "lab", "web", "static");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const common = { bundle: true, legalComments: "none", logLevel: "warning", target: "es2020" };
await esbuild.build({
  ...common, entryPoints: { vendor: join(here, "src", "vendor.js") }, outdir: out, minify: true, format: "iife",
  loader: { ".ttf": "file" }, assetNames: "[name]",
});
await esbuild.build({
  ...common, entryPoints: { "editor.worker": "monaco-editor/esm/vs/editor/editor.worker.js" }, outdir: out,
  minify: true, format: "iife",
});
await esbuild.build({ ...common, entryPoints: { app: join(here, "src", "app.js") }, outdir: out, format: "iife" });
for (const name of readdirSync(join(here, "src"))) {
  if (name.endsWith(".html") || name.endsWith(".css")) copyFileSync(join(here, "src", name), join(out, name));
}
