"""From folders of photos to a saved classifier, with the shared MobileNetV2 weights.

The whole featx workflow on clothing10 (train / validation / test folders):

1. score a logistic-regression head honestly: C chosen on validation, test scored once;
2. fit the same pipeline on train + validation, save it, load it back;
3. predict the top-3 classes of a few test photos.

Every embedding goes to the cache, so a second run computes nothing.

    python examples/photos_to_classifier.py                 # all 3,781 photos, ~1 min
    python examples/photos_to_classifier.py --per-class 20  # a quick look
"""

from __future__ import annotations

import pandas as pd
from _data import arguments, photos

import featx

args = arguments(__doc__)
weights = args.shared / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5"
data = args.shared / "datasets" / "clothing10"
train, validation, test = (
    photos(data / s, args.per_class) for s in ("train", "validation", "test")
)
network = dict(backbone="MobileNetV2", weights=weights, input_size=160, cache_dir=args.cache_dir)

result = featx.evaluate(train=train, validation=validation, test=test, head="logreg", **network)
print(f"test accuracy {result['accuracy']:.3f} (C chosen on validation: {result['chosen_params']})")

C = result["chosen_params"]["clf__C"]
model = featx.fit_classifier(
    pd.concat([train, validation]), head="logreg", head_params={"C": C}, **network
)
featx.save_classifier(model, "clothes.featx")
model = featx.load_classifier("clothes.featx")
some = test.groupby("label").head(1).head(4)  # one photo of each of four classes
for path, label, top in zip(
    some.path, some.label, featx.predict_top_k(model, list(some.path)), strict=True
):
    guesses = ", ".join(f"{name} {p:.2f}" for name, p in top)
    print(f"{path.split('/')[-1]} ({label}): {guesses}")
