"""A small, clean training-data set for tests that feed the command line bad input.

Two emotions with six short texts each; each emotion's texts are positives in its own
`<emotion>.jsonl` and negatives in the other's. Tests that need held-out rows mark the
last texts of each emotion `split: heldout`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

ROWS = {
    "joy": [
        "We laughed all afternoon at the fair.",
        "The puppy wagged its tail at me!",
        "Sunlight and music filled the kitchen.",
        "She won the race and cheered.",
        "Cake and balloons for everyone today.",
        "He danced in the rain, grinning.",
    ],
    "fear": [
        "Footsteps behind me in the dark alley.",
        "The plane dropped suddenly.",
        "A scream from the basement at night.",
        "The ice cracked under my boots.",
        "Something moved under the bed.",
        "The brakes failed on the hill.",
    ],
}


def jsonl_files(
    texts: int = 4,
    *,
    heldout: int = 0,
    polarity: Callable[[str, str], str] | None = None,
) -> dict[str, bytes]:
    """`<emotion>.jsonl` contents from the first `texts` texts of each emotion, the last
    `heldout` of them marked held out; `polarity(emotion, other)` overrides the label."""
    pick = polarity or (lambda emotion, other: "positive" if other == emotion else "negative")
    files = {}
    for emotion in ROWS:
        rows = []
        for other, all_texts in ROWS.items():
            for i, text in enumerate(all_texts[:texts]):
                row = {"emotion": emotion, "text": text, "polarity": pick(emotion, other)}
                if heldout:
                    row["split"] = "heldout" if i >= texts - heldout else "train"
                rows.append(row)
        files[emotion] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return files


def write_training_dir(root: Path, texts: int = 4, *, heldout: int = 0) -> Path:
    """Write `jsonl_files(texts, heldout=heldout)` into `root` (made if missing)."""
    root.mkdir(parents=True, exist_ok=True)
    for emotion, content in jsonl_files(texts, heldout=heldout).items():
        (root / f"{emotion}.jsonl").write_bytes(content)
    return root
