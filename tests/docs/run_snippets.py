#!/usr/bin/env python3
"""The doc-snippet test: every command in README.md and docs/*.md runs, every link resolves.

Convention for writers of the docs (also in docs/README.md):

* A fenced block tagged ```sh holds commands, one per line (a trailing `\\`
  continues a line; `#` comments are allowed). It is run. Blocks tagged
  ```cpp, ```yaml, ```text, ```python, ```cmake are not commands and are not
  run; an untagged block is not run either, but one whose lines look like
  commands (./build/..., bash, cmake, python3, ...) is an error: tag it.
* Each file's ```sh blocks run in order, one block at a time, as
  `bash -euo pipefail -c BLOCK`, in a scratch directory of their own (one per
  file) that looks like the repository root to a reader: `configs`,
  `examples`, `tests`, `scripts`, `bench`, `cmake`, `python` are links to the source
  tree and `build/cairn` (and `build/example_*`) to the binaries under test.
  A later block sees the run folders an earlier one made (fit, then test, then
  inspect). `python3` is the build's Python with torch (CAIRN_PYTHON) when
  --python is given.
* A block must exit 0, unless the line right before its opening fence is
  `<!-- snippet: exit N -->`: then it must exit with N (documented errors).
* A block that cannot run inside a test (it installs packages, runs
  scripts/main.sh or scripts/test.sh, a full benchmark, a multi-minute
  training, needs a GPU or several hosts) has
  `<!-- snippet: not-run: REASON -->` on the line right before its opening
  fence. The reason is required; every such block is printed with its reason,
  and the paths of the repository it names (scripts/..., configs/..., ...)
  must exist. A full command may be not-run only if a cheap runnable one
  follows it.
* The README's first block (its two commands: set up and run the main job,
  set up and run the tests) is not run here and needs no marker: CI runs
  `.ci/run`, which must call scripts/test.sh, and scripts/main.sh must exist
  and name the config the README says it trains (checked).
* Every relative markdown link must name an existing file or folder, and its
  `#anchor` a heading of that file (GitHub's rule: lowercase, punctuation
  other than `-` and `_` dropped, spaces to `-`).

Usage (CTest passes the real paths; see tests/CMakeLists.txt):
  run_snippets.py --source-dir DIR --cairn BUILD/cairn [--examples-dir DIR]
                  [--python PYTHON] [--only README.md docs/cli.md ...] [--keep]
                  [--links-only]
"""
import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

LINKED = ["configs", "examples", "tests", "scripts", "bench", "cmake", "python"]
NOT_COMMAND_TAGS = {"cpp", "yaml", "text", "python", "cmake", ""}
DIRECTIVE = re.compile(r"^\s*<!--\s*snippet:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")
LOOKS_LIKE_COMMAND = re.compile(r"^\s*(\./build/|bash |cmake |python3? |torchrun |srun |pip |apt-get )")
BLOCK_TIMEOUT_S = 600


class Block:
    def __init__(self, path, line, tag, lines, directive):
        self.path, self.line, self.tag, self.lines, self.directive = path, line, tag, lines, directive

    @property
    def where(self):
        return "%s:%d" % (self.path, self.line)


def parse_blocks(rel, text, errors):
    """Every fenced block of a markdown file: (opening line, tag, body lines, directive)."""
    blocks = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if DIRECTIVE.match(lines[i]) and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
                errors.append("%s:%d: a snippet directive must be the line right before a block's opening fence"
                              % (rel, i + 1))
            i += 1
            continue
        indent, fence, tag = m.group(1), m.group(2), m.group(3).lower()
        start = i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i >= len(lines):
            errors.append("%s:%d: a fenced block is never closed" % (rel, start + 1))
        i += 1
        directive = None
        if start > 0:
            d = DIRECTIVE.match(lines[start - 1])
            if d:
                directive = d.group(1)
        blocks.append(Block(rel, start + 1, tag, body, directive))
    return blocks


def github_slug(heading):
    h = re.sub(r"<[^>]+>", "", heading.strip()).lower()
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors_of(text):
    out, seen, in_fence = set(), {}, None
    for ln in text.split("\n"):
        m = FENCE.match(ln)
        if m:
            in_fence = None if in_fence else m.group(2)[0]
            continue
        if in_fence:
            continue
        h = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", ln)
        if h:
            s = github_slug(h.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else "%s-%d" % (s, n))
    return out


def check_links(src, rel, text, errors):
    """Relative links must resolve: the file (or folder) exists, the #anchor is one of its headings."""
    prose, in_fence = [], None
    for ln in text.split("\n"):
        m = FENCE.match(ln)
        if m:
            in_fence = None if in_fence else m.group(2)[0]
            prose.append("")
            continue
        prose.append("" if in_fence else ln)
    prose = "\n".join(prose)
    prose = re.sub(r"``.*?``|`[^`]*`", "", prose, flags=re.S)   # inline code is not a link
    here = os.path.dirname(os.path.join(src, rel))
    count = 0
    for m in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto:
            continue
        count += 1
        line = prose.count("\n", 0, m.start()) + 1
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(here, path)) if path else os.path.join(src, rel)
        if not os.path.exists(full):
            errors.append("%s:%d: broken link '%s': %s does not exist" % (rel, line, target, os.path.relpath(full, src)))
            continue
        if anchor:
            if not full.endswith(".md") or os.path.isdir(full):
                errors.append("%s:%d: link '%s' has an anchor into a file that is not markdown" % (rel, line, target))
                continue
            with open(full, encoding="utf-8") as f:
                if anchor not in anchors_of(f.read()):
                    errors.append("%s:%d: broken link '%s': no heading '#%s' in %s"
                                  % (rel, line, target, anchor, os.path.relpath(full, src)))
    return count


def make_scratch(src, cairn, examples_dir, python):
    d = tempfile.mkdtemp(prefix="cairn-doc-snippets-")
    for name in LINKED:
        if os.path.exists(os.path.join(src, name)):
            os.symlink(os.path.join(src, name), os.path.join(d, name))
    os.mkdir(os.path.join(d, "build"))
    os.symlink(os.path.abspath(cairn), os.path.join(d, "build", "cairn"))
    for ex in sorted(glob.glob(os.path.join(examples_dir, "example_*"))):
        if os.access(ex, os.X_OK) and not os.path.isdir(ex):
            os.symlink(os.path.abspath(ex), os.path.join(d, "build", os.path.basename(ex)))
    bindir = os.path.join(d, ".doc-bin")
    os.mkdir(bindir)
    if python:
        # A wrapper, not a link: a virtual environment's python finds its
        # packages through the path it is started by.
        with open(os.path.join(bindir, "python3"), "w") as f:
            f.write('#!/bin/sh\nexec "%s" "$@"\n' % python)
        os.chmod(os.path.join(bindir, "python3"), 0o755)
    return d, bindir


def run_block(block, cwd, bindir):
    # The ERR trap names the failing line; the block's lines start at line 2.
    script = "trap 'echo \"[doc-snippet] failed at block line $((LINENO - 1))\" >&2' ERR\n" + "\n".join(block.lines)
    env = dict(os.environ)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.monotonic()
    # A session of its own, so that nothing a block started in the background
    # outlives it (a failed block may leave a peer process waiting); output
    # to a file, so that such a process cannot hold the test on a pipe.
    with tempfile.TemporaryFile() as log:
        p = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        log.seek(0)
        out = log.read().decode("utf-8", "replace")
    if rc is None:
        out += "\n[doc-snippet] timed out after %d s" % BLOCK_TIMEOUT_S
    return rc, out, time.monotonic() - t0


def failing_line(block, out):
    m = re.findall(r"\[doc-snippet\] failed at block line (\d+)", out)
    if m:
        n = int(m[-1])
        if 1 <= n <= len(block.lines):
            return block.line + n, block.lines[n - 1].strip()
    return block.line, None


def repo_paths_exist(src, block, errors):
    """A not-run block still may not rot: the repository files it names must exist."""
    for n, ln in enumerate(block.lines, start=1):
        code = ln.split(" #")[0] if not ln.lstrip().startswith("#") else ""
        for p in re.findall(r"(?<![\w./-])((?:\.ci|configs|scripts|bench|tests|examples|cmake)/[\w./-]*\w)", code):
            if not os.path.exists(os.path.join(src, p)):
                errors.append("%s:%d: not-run block names %s, which does not exist" % (block.path, block.line + n, p))


def check_ci(src, errors):
    """The two commands at the top of the README are not run here: CI runs them. Check that it does."""
    ci = os.path.join(src, ".ci", "run")
    if not os.path.exists(ci):
        errors.append(".ci/run does not exist: nothing runs scripts/test.sh")
    else:
        with open(ci) as f:
            calls = [ln for ln in f if re.match(r"^\s*(exec\s+)?((ba)?sh\s+)?(\./)?scripts/test\.sh(\s|$)", ln)]
        if not calls:
            errors.append(".ci/run does not call scripts/test.sh")
    main_sh = os.path.join(src, "scripts", "main.sh")
    if not os.path.exists(main_sh):
        errors.append("scripts/main.sh does not exist")
        return
    with open(main_sh) as f:
        body = f.read()
    with open(os.path.join(src, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    m = re.search(r"^bash scripts/main\.sh\b.*?(configs/[\w./-]+\.yaml)", readme, re.M)
    if not m:
        errors.append("README.md: no `bash scripts/main.sh` line naming its config")
    elif m.group(1) not in body:
        errors.append("README.md says scripts/main.sh trains %s; scripts/main.sh does not name it" % m.group(1))
    elif not os.path.exists(os.path.join(src, m.group(1))):
        errors.append("%s (the main job's config) does not exist" % m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source-dir", default=os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..")))
    ap.add_argument("--cairn", help="the cairn binary under test")
    ap.add_argument("--examples-dir", help="folder of the example_* binaries (default: the cairn binary's)")
    ap.add_argument("--python", help="Python with torch, `python3` inside the snippets")
    ap.add_argument("--only", nargs="*", help="only these files (relative to the source dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directories")
    ap.add_argument("--links-only", action="store_true", help="check links and the block convention, run nothing")
    a = ap.parse_args()
    src = os.path.abspath(a.source_dir)
    if not a.links_only and not a.cairn:
        ap.error("--cairn is required (or --links-only)")
    files = ["README.md"] + sorted(os.path.relpath(p, src) for p in glob.glob(os.path.join(src, "docs", "*.md")))
    if os.path.exists(os.path.join(src, "docs", "README.md")):   # the book's contents first
        files.remove("docs/README.md")
        files.insert(1, "docs/README.md")
    if a.only:
        files = [f for f in files if f in a.only]
    errors, t_start = [], time.monotonic()
    plan, links = [], 0
    for rel in files:
        with open(os.path.join(src, rel), encoding="utf-8") as f:
            text = f.read()
        links += check_links(src, rel, text, errors)
        blocks = parse_blocks(rel, text, errors)
        for k, b in enumerate(blocks):
            d = b.directive
            if rel == "README.md" and k == 0 and d is None:
                # The README's opening block is the two-command contract and carries
                # no marker: CI runs it (check_ci holds .ci/run and scripts/main.sh to it).
                d = "not-run: the README's two commands: CI runs scripts/test.sh (.ci/run); scripts/main.sh is the 10-epoch main job, whose config the quick try below runs"
            if b.tag != "sh":
                if d is not None:
                    errors.append("%s: a snippet directive before a block that is not ```sh" % b.where)
                if b.tag not in NOT_COMMAND_TAGS:
                    errors.append("%s: block tagged '%s': use sh (commands) or one of %s"
                                  % (b.where, b.tag, ", ".join(sorted(t for t in NOT_COMMAND_TAGS if t))))
                elif b.tag == "" and any(LOOKS_LIKE_COMMAND.match(ln) for ln in b.lines):
                    errors.append("%s: an untagged block holds commands: tag it ```sh (run) or ```text" % b.where)
                continue
            if not any(ln.strip() and not ln.strip().startswith("#") for ln in b.lines):
                errors.append("%s: an empty ```sh block" % b.where)
                continue
            if d is None:
                b.expect = 0
            elif re.fullmatch(r"exit \d+", d):
                b.expect = int(d.split()[1])
            elif re.fullmatch(r"not-run(:.*)?", d):
                reason = d.partition(":")[2].strip()
                if not reason:
                    errors.append("%s: a not-run block without a reason (<!-- snippet: not-run: REASON -->)" % b.where)
                b.expect, b.reason = None, reason
                repo_paths_exist(src, b, errors)
            else:
                errors.append("%s: unknown snippet directive '%s' (exit N, or not-run: REASON)" % (b.where, d))
                continue
            plan.append(b)
    if not a.only or "README.md" in a.only:
        check_ci(src, errors)

    not_run = [b for b in plan if b.expect is None]
    to_run = [b for b in plan if b.expect is not None]
    print("doc snippets: %d files, %d links checked, %d ```sh blocks: %d to run, %d not run"
          % (len(files), links, len(plan), len(to_run), len(not_run)))
    for b in not_run:
        print("  not run  %s: %s" % (b.where, b.reason or "(NO REASON)"))
    if errors:   # the convention is broken: say so before spending time on commands
        for e in errors:
            print("ERROR " + e)
        print("doc snippets: FAILED (%d problems)" % len(errors))
        return 1
    if a.links_only:
        print("doc snippets: links and blocks OK (nothing run: --links-only)")
        return 0
    examples_dir = a.examples_dir or os.path.dirname(os.path.abspath(a.cairn))
    failed = 0
    for rel in files:
        blocks = [b for b in to_run if b.path == rel]
        if not blocks:
            continue
        scratch, bindir = make_scratch(src, a.cairn, examples_dir, a.python)
        try:
            for b in blocks:
                rc, out, secs = run_block(b, scratch, bindir)
                if rc == b.expect:
                    print("  ok       %s (%d lines, exit %d, %.1f s)" % (b.where, len(b.lines), rc, secs))
                    sys.stdout.flush()
                    continue
                failed += 1
                line, cmd = failing_line(b, out) if rc != 0 else (b.line, None)
                print("FAIL %s:%d: %s (expected %d)" % (rel, line, "timed out" if rc is None else "exit %d" % rc, b.expect))
                if cmd:
                    print("     command: " + cmd)
                tail = out[-6000:]
                print("     ---- output (last %d characters) ----" % len(tail))
                print("\n".join("     | " + ln for ln in tail.rstrip("\n").split("\n")))
                print("     (the later blocks of %s are skipped: they may depend on this one)" % rel)
                break
        finally:
            if a.keep:
                print("  scratch directory of %s kept: %s" % (rel, scratch))
            else:
                shutil.rmtree(scratch, ignore_errors=True)
    secs = time.monotonic() - t_start
    if failed:
        print("doc snippets: FAILED (%d block(s)), %.0f s" % (failed, secs))
        return 1
    print("doc snippets: OK, %d blocks run, %d not run (reasons above), %d links, %.0f s"
          % (len(to_run), len(not_run), links, secs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
