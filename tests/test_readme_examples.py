"""The README's examples run as written: every code block marked ``<!-- runnable -->`` (the line before its fence)
runs here, in a fresh working directory, in smoke mode.

Smoke mode is a substitution of sizes only (:data:`SMOKE`): sample counts, batch sizes, sampler steps and relaxation
step caps become small, so a block whose commands, flags, names or Python no longer work fails CI while the suite
stays quick. ``mattergen-lab`` is this checkout's command line (``python -m mattergen_lab.cli``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- runnable -->"

#: (pattern, replacement): sizes made small; everything else in a block runs as written.
SMOKE: list[tuple[str, str]] = [
    (r"(--num-samples\s+|num_samples\s*[=:]\s*)\d+", r"\g<1>2"),
    (r"(--batch-size\s+|batch_size\s*[=:]\s*)\d+", r"\g<1>2"),
    (r"(--steps\s+|num_steps\s*[=:]\s*)\d+", r"\g<1>5"),
    (r"(--max-steps\s+|max_steps\s*[=:]\s*)\d+", r"\g<1>10"),
    (r"(\bevery\s*=\s*)\d+", r"\g<1>1"),
    (r"(mattergen-lab quickstart)(?![^\n]*--steps)", r"\1 --num-samples 2 --steps 5"),
]


def runnable_blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of every block whose fence follows a ``<!-- runnable -->`` line."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        fence = lines[i + 1]
        assert fence.startswith("```"), f"README line {i + 1}: {MARK} must be followed by a code fence, got {fence!r}"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        blocks.append((i + 2, fence[3:].strip(), "\n".join(lines[i + 2:end]) + "\n"))
    return blocks


def smoke(code: str) -> str:
    for pattern, replacement in SMOKE:
        code = re.sub(pattern, replacement, code)
    return code


BLOCKS = runnable_blocks((ROOT / "README.md").read_text())

#: what a block must print (in smoke mode), found by a snippet of its code; a block not listed must just succeed.
EXPECT = {
    "SamplingPipeline.for_request": r"^2 crystals: \w+, \w+$",
    "sampler.iter_steps": r"^5 0\.0$",  # the final frame: all 5 steps done, t = 0
    "--composition Li2MnO3": r"wrote 2 structures",
    "campaign run small.yaml": r"2 arm\(s\), 4 crystals planned(.|\n)*evaluation 2/2 tasks, 4 crystals(.|\n)*finished",
    'substitute="Ti=Zr,Hf"': r"^\['Sr(Zr|Hf)O3'(, 'Sr(Zr|Hf)O3'){3}\]$",  # every Ti site became Zr or Hf
    "DesignSession()": r"^\s*id\s+formula\s+space_group\s+plausible_density\n\s*1-0 +\w+ +\d+ +True",  # table head, 1st row
}


def test_the_readme_marks_its_examples_and_smoke_mode_only_shrinks_sizes():
    langs = sorted(lang for _, lang, _ in BLOCKS)
    assert langs.count("python") >= 2 and langs.count("bash") >= 2, langs
    assert smoke("mattergen-lab sample --num-samples 64 --steps 1000 --batch-size 16 --out x") == \
        "mattergen-lab sample --num-samples 2 --steps 5 --batch-size 2 --out x"
    assert smoke("SamplingRequest(num_samples=8, batch_size=8, num_steps=50, every=20)") == \
        "SamplingRequest(num_samples=2, batch_size=2, num_steps=5, every=1)"
    assert smoke("num_steps: 200\nmax_steps: 500\n") == "num_steps: 5\nmax_steps: 10\n"
    assert smoke("mattergen-lab quickstart --out q") == "mattergen-lab quickstart --num-samples 2 --steps 5 --out q"
    assert smoke("--formula-units 2 --seed 0") == "--formula-units 2 --seed 0"


@pytest.mark.parametrize("line,lang,code", BLOCKS, ids=[f"README.md:{b[0]}-{b[1]}" for b in BLOCKS])
def test_readme_block_runs(line, lang, code, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    code = smoke(code)
    if lang == "python":
        cmd = [sys.executable, "-c", code]
    elif lang == "bash":
        prelude = f'set -euo pipefail\nmattergen-lab() {{ "{sys.executable}" -m mattergen_lab.cli "$@"; }}\n'
        cmd = ["bash", "-c", prelude + code]
    else:
        pytest.fail(f"README.md:{line}: a runnable block must be bash or python, not {lang!r}")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"README.md:{line} failed (smoke mode):\n{code}\n--- stdout\n{done.stdout[-3000:]}" \
                                 f"\n--- stderr\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
    for snippet, expected in EXPECT.items():
        if snippet in code:
            assert re.search(expected, done.stdout, re.MULTILINE), (expected, done.stdout[-3000:])
    assert "No Pauling electronegativity" not in done.stderr + done.stdout
