"""Which landmark model a detect run uses: a bundle by name or folder, the default, or none."""
from __future__ import annotations

from typing import Optional


def resolve_model(value: Optional[str], device: str = "cpu", default: Optional[str] = None):
    """The LandmarkModel to use and a note for the user, or None and the reason there is none.

    ``value``: an installed bundle's name, a bundle folder, ``"none"`` (the detector's points
    only) or None: then ``default``, and without one the installed bundle marked
    ``"default": true`` (``landmarknet.models.default_bundle``).
    """
    from landmarknet.models import default_bundle, load_bundle

    if value is not None and value.lower() == "none":
        return None, "no landmark model (--model none)"
    if value is None:
        value = default
    if value is None:
        chosen, why = default_bundle()
        if chosen is None:
            return None, why
        value = str(chosen)
    model = load_bundle(value, device=device)
    return model, f"landmark model: {model.name} ({model.spec.folder})"
