"""lmms-eval integration: the ``svlm`` model (``lmms-eval --model svlm``) and the tasks of svlm's generated
benchmarks (``svlm.lmms.synthetic_task``).

svlm registers its model through lmms-eval's own plugin mechanism, the ``lmms_eval.models`` entry-point
group (``pyproject.toml``), whose payload is `manifest`. Nothing here imports lmms-eval until lmms-eval
loads the plugin, so the base install never needs it (``pip install 'svlm[lmms]'`` or ``make install-lmms``).
"""

from __future__ import annotations

from typing import Any

MODEL_NAME = "svlm"
MODEL_CLASS_PATH = "svlm.lmms.model.SVLM"


def manifest() -> Any:
    """The lmms-eval ``ModelManifest`` of the ``svlm`` model (the entry point's payload)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS_PATH)
