"""``adawise run``: every method on an ImageNet-R or ImageNet-C stream, with your own local weights.

Examples::

    adawise run --stream imagenet-r --data ~/data/imagenet-r --arch ViT-B-16-quickgelu \\
        --pretrained ~/weights/vit_b_16_openai.bin --finetuned ~/weights/wiseft_ft.safetensors \\
        --methods zeroshot,finetuned,wiseft,ose,adawise --out runs/inr
    adawise run --stream imagenet-c --data ~/data/imagenet/val --order gradual --corruptions fog,snow ...
    adawise run --config runs/inr/config.json        # repeat a run (options on the line still win)

ImageNet-C streams corrupt clean ImageNet validation images on the fly (``streams.schedules``):
schedules (``--schedule``) ``continual`` (the 15 corruptions in order at ``--severity``, default 5),
``reset_each_shift``, ``gradual`` (severity 1->5->1 per corruption) and ``mixed``; sample orders
(``--order``, :mod:`streams.orders`) ``shuffled``, ``class-sorted``, ``dirichlet[:δ]``; they combine
(the old ``--order gradual`` etc. still name the schedule). The work itself lives in
:mod:`adawise.apps.experiment`, shared with ``examples/stream_imagenet_r.py``.
"""

from __future__ import annotations

import argparse

from adawise.apps import experiment

__all__ = ["add_arguments", "main", "EPILOG"]

EPILOG = experiment.EPILOG  # the examples shown under `adawise run --help`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``adawise run`` (see :func:`adawise.apps.experiment.add_arguments`)."""
    experiment.add_arguments(parser, streams=experiment.STREAMS)


def main(args: argparse.Namespace) -> int:
    """Run it; a misuse raises an AdawiseError (exit code 2, a line naming what to download and pass)."""
    return experiment.main(args)
