#!/usr/bin/env python
"""Every method on the same ImageNet-R stream: JSONL logs, a table and plots.

    python examples/stream_imagenet_r.py --data ~/data/imagenet-r --arch ViT-B-16-quickgelu \\
        --pretrained ~/weights/vit_b_16_openai.bin --finetuned ~/weights/wiseft_ft.safetensors \\
        --methods zeroshot,finetuned,wiseft,ose,vrf,adawise --vrf-index zsf.safetensors \\
        --order rendition --batch-size 64 --device cuda --templates openai --out runs/imagenet-r

Both models carry a 1000-class ImageNet head (as a fine-tuned ImageNet checkpoint does); the logits
are projected to the 200 ImageNet-R classes by ``streams.imagenet_r.IMAGENET_R_MASK``. The zero-shot
head is cached on disk, keyed by the weights, class names and templates. Writes ``<out>/<method>.jsonl``
(+ ``.txt``), ``table.md``, ``accuracy.png`` (per rendition) and ``alpha.png`` (α over the stream).
``--pretrained none --finetuned none`` runs on random weights (a smoke test). Without data or weights
it says what to download and pass; with no downloads at all, run ``adawise demo``.
"""

import argparse
import logging
import sys

from adawise.apps import experiment
from adawise.cli import ArgumentParser, guarded


def main(argv=None) -> int:
    """Run it; a misuse exits with code 2 and one line saying what to pass."""
    parser = ArgumentParser(prog="stream_imagenet_r.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    experiment.add_arguments(parser, streams=("imagenet-r",))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return guarded("stream_imagenet_r.py", experiment.main, args)


if __name__ == "__main__":
    sys.exit(main())
