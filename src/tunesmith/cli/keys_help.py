"""The config keys and their help texts, as `tunesmith train --help` lists them."""

import dataclasses

from ..config.schema import SECTIONS
from ..methods import config_classes
from ..tasks import all_sections


def config_keys_help() -> str:
    lines = ["config keys:"]
    sections = dict(SECTIONS)
    sections.update({f"method ({name})": cls for name, cls in config_classes().items()})
    sections.update(all_sections())
    for section, cls in sections.items():
        lines += _field_lines(section.split(" ")[0], cls)
    return "\n".join(lines)


def _field_lines(prefix: str, cls) -> list[str]:
    lines = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(_default(f)):
            lines += _field_lines(key, type(_default(f)))  # a nested section: its own keys
        else:
            lines.append(f"  {key:<24} {f.metadata.get('help', '')}  [default: {_default(f)}]")
    return lines


def _default(f):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()
