"""Write the `shakespeare_mc` lm-eval task's items from the held-out play (Hamlet) of the shakespeare corpus.

Each item shows two consecutive verse lines of one speech and asks which of four lines comes next:
the true next line, or one of three lines of similar length from other speeches of the same play.
Deterministic (seeded), so the shipped file can be rebuilt and compared:

    .venv/bin/python scripts/make_shakespeare_mc.py evaluators/compressor_evaluators/lm_harness/tasks/shakespeare_mc.jsonl
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

from compressor.data import shakespeare_files

ITEMS = 200
SEED = 17
SPEAKER = re.compile(r"^[A-Z][A-Za-z]*(?: [A-Z][A-Za-z]*)*\.$")  # "Laer.", "King.", "First Clown."


def verse_line(line: str) -> bool:
    """A line of verse worth asking about: not a stage direction, not a speaker tag, 25-70 characters."""
    line = line.strip()
    return 25 <= len(line) <= 70 and not line.startswith("[") and not SPEAKER.match(line)


def speeches(text: str) -> list[list[str]]:
    """The play's speeches, each its list of lines (the speaker tag dropped)."""
    found = []
    for block in re.split(r"\n\s*\n", text):
        lines = [x.rstrip() for x in block.strip().splitlines()]
        if len(lines) >= 4 and SPEAKER.match(lines[0].strip()):
            found.append([x.strip() for x in lines[1:]])
    return found


def main(out: str) -> None:
    """Write ITEMS items as JSON lines to ``out``."""
    (play,) = shakespeare_files("evaluation")
    speech_list = speeches(play.read_text(encoding="utf-8", errors="replace"))
    pool = [(i, line) for i, s in enumerate(speech_list) for line in s if verse_line(line)]
    rng = random.Random(SEED)
    candidates = [(i, s[j:j + 3]) for i, s in enumerate(speech_list) for j in range(len(s) - 2)
                  if all(verse_line(x) for x in s[j:j + 3])]
    rng.shuffle(candidates)
    items, used = [], set()
    for speech, (a, b, gold) in candidates:
        if gold in used:
            continue
        near = [line for i, line in pool if i != speech and line != gold and 0.7 <= len(line) / len(gold) <= 1.3]
        if len(near) < 3:
            continue
        choices = [gold, *rng.sample(near, 3)]
        rng.shuffle(choices)
        items.append({"context": f"{a}\n{b}\n", "choices": choices, "label": choices.index(gold)})
        used.add(gold)
        if len(items) == ITEMS:
            break
    Path(out).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8")
    print(f"wrote {len(items)} items from {len(speech_list)} speeches of {play.name} to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
