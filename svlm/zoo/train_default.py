"""Recipe of svlm's zoo models (entry point): ``python -m svlm.zoo.train_default --help``.

The recipe lives in `svlm.zoo.recipe`, one module per stage and concern (options, model, questions, packing,
labels, batches, losses, the vision / alignment / VQA stages, evaluation, command line); this module keeps
the command and every public name of the recipe where they were (``svlm.zoo.recipe.__all__``).
"""

from __future__ import annotations

from svlm.zoo.recipe import *  # noqa: F403 (every public name of the recipe, re-exported)
from svlm.zoo.recipe import __all__  # noqa: F401
from svlm.zoo.recipe.cli import main

if __name__ == "__main__":
    main()
