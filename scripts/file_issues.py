#!/usr/bin/env python3
"""Open or update one GitHub issue per regressed benchmark, from `moebench alerts --json`.

The nightly workflow's last step. Each entry of the report's ``issues`` list has a title that is
its key ("Performance regression: <benchmark> on <machine>"): an *open* issue with the
``perf-regression`` label and exactly that title gets a comment with the new findings; otherwise a
new issue is opened. Nothing is ever closed: a person decides a regression is fixed or accepted.

Needs only Python 3 and the ``gh`` CLI with GH_TOKEN (issues: write) and GH_REPO set.
Usage: scripts/file_issues.py alerts.json
"""

from __future__ import annotations

import json
import subprocess
import sys

LABEL = "perf-regression"


def gh(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["gh", *args], input=stdin, stdout=subprocess.PIPE, text=True,
                          check=True).stdout


def open_issues() -> dict[str, int]:
    listed = json.loads(gh("issue", "list", "--state", "open", "--label", LABEL, "--limit", "1000",
                           "--json", "number,title"))
    return {item["title"]: item["number"] for item in listed}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        wanted = json.load(fh)["issues"]
    if not wanted:
        return 0
    gh("label", "create", LABEL, "--color", "B60205", "--force",
       "--description", "Benchmark slower than its history (moebench alerts)")
    existing = open_issues()
    for issue in wanted:
        number = existing.get(issue["title"])
        if number is None:
            url = gh("issue", "create", "--title", issue["title"], "--label", ",".join(issue["labels"]),
                     "--body-file", "-", stdin=issue["body"]).strip()
            print(f"opened {url}: {issue['title']}")
        else:
            gh("issue", "comment", str(number), "--body-file", "-", stdin=issue["body"])
            print(f"updated #{number}: {issue['title']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
