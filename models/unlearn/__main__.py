"""``python -m models.unlearn > docs/methods.md``: the catalogue as a Markdown page."""
from . import registry

print(registry.markdown(), end="")
