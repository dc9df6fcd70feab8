"""Prompt templates whose text features every cache stores.

Templates are stored with ``{data_type}`` already filled in and ``{}`` left for the class
name, so a reader formats them with one argument. Index 0 is TFA-LT's template (DESIGN §1),
index 1 LIFT's (DESIGN §2); the rest is a small ensemble in the spirit of CLIP's.
"""

from __future__ import annotations

TFA_LT = "The category of this {data_type} image is {}."
LIFT = "a photo of a {}."
ENSEMBLE = (
    "a {data_type} image of {}.",
    "a {data_type} image showing {}.",
    "an image of {}.",
    "a close-up {data_type} image of {}.",
)
TEMPLATES = (TFA_LT, LIFT, *ENSEMBLE)


def render_templates(data_type: str) -> list[str]:
    """The templates with ``{data_type}`` filled in and ``{}`` left for the class name.

    ``data_type`` is inserted as plain text (braces in it stay braces); fill the result with
    :func:`fill_prompt`, never ``str.format``.
    """
    return [t.replace("{data_type}", data_type) for t in TEMPLATES]


def fill_prompt(template: str, class_name: str) -> str:
    """``template`` with ``class_name`` at its last ``{}``; nothing else is interpreted.

    Data types and class names come from users' files: through ``str.format`` a name such
    as ``{0.__class__.__mro__}`` would read interpreter internals and a lone ``{`` would
    crash. Here both stay literal text. The class slot is the template's last ``{}``
    (every template puts the data type before the class), so a data type holding ``{}``
    cannot take the class's place.
    """
    at = template.rfind("{}")
    if at < 0:
        from featcache.errors import FeatcacheError

        raise FeatcacheError(f"Prompt template {template!r} has no {{}} slot for the class name.")
    return template[:at] + class_name + template[at + 2:]


def find_template(templates: list[str], kind: str) -> int:
    """Index of ``tfa-lt`` or ``lift`` among stored templates (matched on their fixed words)."""
    marker = {"tfa-lt": "The category of this", "lift": "a photo of a {}."}[kind]
    for i, t in enumerate(templates):
        if marker in t:
            return i
    raise KeyError(f"no {kind} template among {templates}")
