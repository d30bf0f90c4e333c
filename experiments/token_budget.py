"""Tokens per object of the layout prompt on the real CLIP vocabulary (SD 1.x), for COCO-Stuff's classes.

    python experiments/token_budget.py [--grid 256]

Prints, for the 80 COCO thing classes and the 91 COCO-Stuff stuff classes, how many tokens one
object costs in the default template (with and without an attribute token) and how many objects
fit in one 77-token window.
"""

from __future__ import annotations

import argparse

import numpy as np
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from detdiffusion.layout.encoding import LayoutTokenizer
from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.prompt import PromptBuilder
from detdiffusion.layout.tokenizer import load_tokenizer
from detdiffusion.layout.types import Layout, LayoutObject

# COCO-Stuff stuff classes (ids 92-182), as in its labels file.
STUFF = (  # noqa: SIM905 (one string reads like the labels file)
    "banner blanket branch bridge building-other bush cabinet cage cardboard carpet "
    "ceiling-other ceiling-tile cloth clothes clouds counter cupboard curtain desk-stuff dirt "
    "door-stuff fence floor-marble floor-other floor-stone floor-tile floor-wood flower fog "
    "food-other fruit furniture-other grass gravel ground-other hill house leaves light mat "
    "metal mirror-stuff moss mountain mud napkin net paper pavement pillow plant-other plastic "
    "platform playingfield railing railroad river road rock roof rug salad sand sea shelf "
    "sky-other skyscraper snow solid-other stairs stone straw structural-other table tent "
    "textile-other towel tree vegetable wall-brick wall-concrete wall-other wall-panel "
    "wall-stone wall-tile wall-wood water-other waterdrops window-blind window-other wood"
).split()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=256, help="bins a side (GeoDiffusion: 256)")
    args = parser.parse_args(argv)
    things = [
        c
        for c in FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
        if c not in ("__background__", "N/A")
    ]
    builder = PromptBuilder(LocationGrid(args.grid, args.grid))
    tokenizer = LayoutTokenizer(load_tokenizer(), builder)
    box = (0.1, 0.1, 0.6, 0.7)
    print(
        f"grid {args.grid}x{args.grid}; one window holds {tokenizer.capacity} tokens after BOS/EOS; prefix 3"
    )
    for kind, names, attribute in (
        ("thing", things, "easy"),
        ("stuff", STUFF, "background"),
        ("thing", things, "none"),
    ):
        costs = []
        for name in names:
            layout = Layout((LayoutObject(builder.class_name(name), box, attribute),) * 2)
            costs.append(int(tokenizer.budget(layout).per_object[0]))  # the first: with its separator
        costs = np.asarray(costs)
        room = tokenizer.capacity - 3  # after the prefix "an image with"
        print(
            f"{kind:5} {len(names):3} classes, attribute {attribute:10}: tokens/object min {costs.min()}, "
            f"mean {costs.mean():.2f}, max {costs.max()}; objects per window at the mean: "
            f"{int(room // costs.mean())}, at the max: {int(room // costs.max())}"
        )


if __name__ == "__main__":
    main()
