"""Blended multi-turn serving: blendrt against transformers and against one pool per member.

The same as `blendrt bench`; see `blendrt bench --help`.

    python benchmarks/bench_blend.py          # the demo blend on the CPU, 32 x 8 turns
    python benchmarks/bench_blend.py --device cuda --dtype bfloat16 \
        --shapes gpt-j-6b gpt-j-6b vicuna-13b:2  # GPU mode
"""

import sys

from blendrt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
