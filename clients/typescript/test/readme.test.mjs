// The README's quick-start example, exactly as written there, against the gateway under test.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { API_KEY, BASE_URL } from "./helpers.mjs";

test("README example runs", async () => {
  const readme = readFileSync(fileURLToPath(new URL("../README.md", import.meta.url)), "utf8");
  const block = /```js\n([\s\S]*?)```/.exec(readme);
  assert.ok(block, "README.md has a ```js example");
  // Inside the package, so `import "@whatisup/client"` resolves to this build (package self-reference).
  const file = fileURLToPath(new URL("./.readme-example.mjs", import.meta.url));
  writeFileSync(file, block[1]);
  const out = await new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [file],
      { env: { ...process.env, WHATISUP_URL: BASE_URL, WHATISUP_API_KEY: API_KEY }, timeout: 60000 },
      (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stdout}\n${stderr}`)) : resolve(stdout)),
    );
  });
  assert.match(out, /channel\.connected/);
  assert.match(out, /queued msg_/);
  assert.match(out, /received: Hi back/);
});
